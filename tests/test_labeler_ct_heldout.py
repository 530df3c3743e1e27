"""The CT labeler on held-out phrasings: CT report sentences written for this test only.

No real CT report text is available offline, so these sentences were written by hand in chest-CT
report style (positives, negations, hedges, laterality, look-alikes such as thyroid nodules or
subcutaneous emphysema) without looking at the synthetic generator's templates
(``ctxray.synth.reports``). Each case lists the statuses it expects; every other label must be
"absent" (a negative counts as absent). Run this file as a script to print the per-label tables.

Protocol and figures (macro F1 over the 18 labels, hedges negative / positive; status accuracy):
- batch A (105 cases) scored first: 0.778 / 0.805 / 0.754 with the labeler as it was; its misses
  were fixed with general vocabulary and cues (never by pasting the sentences in): now 1.000.
- batch B (90 cases) written after those fixes and scored once: 0.917 / 0.921 / 0.878 (two answer
  keys corrected then: "consolidation versus atelectasis" hedges both, a "nodular ground glass" is
  also a nodule). Its misses were then fixed too (a question mark hedges, "nonspecific" is no hedge,
  subsolid/hilar masses, coronary atherosclerosis, heart dimensions...), two cases were added, and
  batch B now reads 1.000 / 1.000 / 0.989; the labeler before this work reads 0.889 / 0.894 / 0.835
  on it. So the one untouched figure is 0.917: neither batch is held out any more.
- batch C (110 cases, ``FINAL_CASES``) written after every fix and scored once, with no change to the
  labeler or to its answer key afterwards: 0.946 / 0.963 / 0.936, every label >= 0.80 at u=0. Its 12
  misses are left as they are (``python tests/test_labeler_ct_heldout.py`` lists them): "borderline"
  and "possibly a nodule" after the finding are not read as hedges, "fluid in the pericardial recess"
  and "loculated fluid in the pleural space" are not effusions, "the lungs / pleural spaces are clear"
  negates nothing, "coronary arterial calcifications" is also read as arterial, "surgical emphysema" is
  read as emphysema, "subtle mosaicism" is not mosaic attenuation, "consolidative opacities" is also an
  opacity (arguably right).
"""

from __future__ import annotations

import pytest

from ctxray.labeler import find_mentions, label_names, label_report

P, N, U = "positive", "negative", "uncertain"

Case = tuple[str, dict[str, str], dict[str, str]]  # (report text, {label: status}, {label: laterality})

# Batch A: written first, scored before any change (macro F1 0.778), then used to find what the
# rules missed; the fixes added general vocabulary, so batch A is now a development set.
DEV_CASES: list[Case] = [
    # Medical material
    ("Right internal jugular central venous catheter with its tip at the cavoatrial junction.",
     {"Medical material": P}, {"Medical material": "right"}),
    ("Status post CABG with intact median sternotomy cerclage wires.", {"Medical material": P}, {}),
    ("No indwelling lines or tubes.", {"Medical material": N}, {}),
    ("An endobronchial valve is seen in the left upper lobe bronchus.", {"Medical material": P}, {}),
    ("Embolization coils are present in the left lower lobe.", {"Medical material": P}, {}),
    ("A surgical staple line in the right upper lobe is consistent with prior wedge resection.",
     {"Medical material": P}, {}),
    ("The left-sided chest tube has been removed and no residual pneumothorax is seen.",
     {"Medical material": N}, {}),
    ("Possible retained catheter fragment in the right atrium.", {"Medical material": U}, {}),
    # Arterial wall calcification
    ("Calcified atheromatous plaques along the descending thoracic aorta.",
     {"Arterial wall calcification": P}, {}),
    ("Mural calcifications of the aortic arch and the supra-aortic branches.",
     {"Arterial wall calcification": P}, {}),
    ("No atherosclerotic calcification of the thoracic aorta.", {"Arterial wall calcification": N}, {}),
    ("The thoracic aorta has a normal calibre and shows no mural calcification.",
     {"Arterial wall calcification": N}, {}),
    ("Mild calcified plaque in the brachiocephalic and left subclavian arteries.",
     {"Arterial wall calcification": P}, {}),
    ("Scattered aortic calcification, most prominent at the arch.", {"Arterial wall calcification": P}, {}),
    # Cardiomegaly
    ("The heart is mildly enlarged.", {"Cardiomegaly": P}, {}),
    ("The cardiac chambers are enlarged, mainly the left ventricle.", {"Cardiomegaly": P}, {}),
    ("Heart size is normal.", {"Cardiomegaly": N}, {}),
    ("No cardiomegaly.", {"Cardiomegaly": N}, {}),
    ("The cardiothoracic ratio is increased.", {"Cardiomegaly": P}, {}),
    ("The heart is not enlarged.", {"Cardiomegaly": N}, {}),
    # Pericardial effusion
    ("Small pericardial effusion with a maximal depth of 8 mm.", {"Pericardial effusion": P}, {}),
    ("Minimal fluid in the pericardial recesses.", {"Pericardial effusion": P}, {}),
    ("No pericardial effusion or thickening.", {"Pericardial effusion": N}, {}),
    ("A moderate pericardial effusion is present, unchanged.", {"Pericardial effusion": P}, {}),
    ("Pericardial effusion cannot be excluded.", {"Pericardial effusion": U}, {}),
    # Coronary artery wall calcification
    ("Dense calcification of the left anterior descending artery.",
     {"Coronary artery wall calcification": P}, {}),
    ("Coronary calcifications are seen in the LAD and circumflex territories.",
     {"Coronary artery wall calcification": P}, {}),
    ("No coronary artery calcification.", {"Coronary artery wall calcification": N}, {}),
    ("Calcified plaques in the RCA.", {"Coronary artery wall calcification": P}, {}),
    ("The coronary arteries are free of calcified plaque.", {"Coronary artery wall calcification": N}, {}),
    ("Coronary stent in the proximal LAD.", {"Medical material": P}, {}),
    # Hiatal hernia
    ("Small sliding hiatus hernia.", {"Hiatal hernia": P}, {}),
    ("Part of the stomach herniates through the oesophageal hiatus.", {"Hiatal hernia": P}, {}),
    ("No hiatal hernia.", {"Hiatal hernia": N}, {}),
    ("Paraesophageal hernia containing the gastric fundus.", {"Hiatal hernia": P}, {}),
    ("Umbilical hernia containing fat.", {}, {}),
    ("Possible small hiatal hernia.", {"Hiatal hernia": U}, {}),
    # Lymphadenopathy
    ("Enlarged subcarinal lymph node measuring 15 mm in short axis.", {"Lymphadenopathy": P}, {}),
    ("Multiple enlarged mediastinal and hilar nodes.", {"Lymphadenopathy": P}, {}),
    ("No mediastinal or hilar lymphadenopathy.", {"Lymphadenopathy": N}, {}),
    ("Mediastinal lymph nodes are within normal size limits.", {"Lymphadenopathy": N}, {}),
    ("A few subcentimetric lymph nodes in the prevascular space.", {"Lymphadenopathy": N}, {}),
    ("Right hilar adenopathy is suspected.", {"Lymphadenopathy": U}, {"Lymphadenopathy": "right"}),
    # Emphysema
    ("Centrilobular emphysematous changes in both upper lobes.", {"Emphysema": P}, {"Emphysema": "bilateral"}),
    ("Paraseptal emphysema at the lung apices.", {"Emphysema": P}, {}),
    ("No emphysema.", {"Emphysema": N}, {}),
    ("Scattered bullae in the right apex.", {"Emphysema": P}, {"Emphysema": "right"}),
    ("Subcutaneous emphysema in the left chest wall.", {}, {}),
    ("Low attenuation areas in the upper lobes suggestive of early emphysema.", {"Emphysema": U}, {}),
    # Atelectasis
    ("Subsegmental atelectatic bands in the left lower lobe.", {"Atelectasis": P}, {"Atelectasis": "left"}),
    ("Linear atelectasis at both lung bases.", {"Atelectasis": P}, {"Atelectasis": "bilateral"}),
    ("No atelectasis.", {"Atelectasis": N}, {}),
    ("Passive collapse of the right lower lobe next to the effusion.",
     {"Atelectasis": P, "Pleural effusion": P}, {"Atelectasis": "right"}),
    ("Plate-like atelectasis cannot be excluded in the lingula.", {"Atelectasis": U}, {}),
    # Lung nodule
    ("A 6 mm solid nodule in the right upper lobe.", {"Lung nodule": P}, {"Lung nodule": "right"}),
    ("Several micronodules scattered in both lungs.", {"Lung nodule": P}, {"Lung nodule": "bilateral"}),
    ("No pulmonary nodules.", {"Lung nodule": N}, {}),
    ("A spiculated mass measuring 3 cm in the left lower lobe.", {"Lung nodule": P}, {"Lung nodule": "left"}),
    ("Thyroid nodule in the left lobe.", {}, {}),
    ("Tiny subpleural nodule in the left lower lobe, likely an intrapulmonary lymph node.",
     {"Lung nodule": P}, {}),
    # Lung opacity
    ("Patchy ground-glass areas in the right middle lobe.", {"Lung opacity": P}, {"Lung opacity": "right"}),
    ("Faint hazy increased attenuation in the left lower lobe.", {"Lung opacity": P}, {}),
    ("No ground-glass opacity.", {"Lung opacity": N}, {}),
    ("Areas of increased attenuation in both lower lobes.", {"Lung opacity": P}, {"Lung opacity": "bilateral"}),
    ("Subtle ground-glass changes may reflect atypical infection.", {"Lung opacity": P}, {}),
    ("Opacities suspicious for infection cannot be ruled out in the left base.", {"Lung opacity": U}, {}),
    # Pulmonary fibrotic sequela
    ("Fibrotic strands in the left upper lobe.", {"Pulmonary fibrotic sequela": P},
     {"Pulmonary fibrotic sequela": "left"}),
    ("Linear scar tissue in the lingula.", {"Pulmonary fibrotic sequela": P}, {}),
    ("No fibrotic changes.", {"Pulmonary fibrotic sequela": N}, {}),
    ("Apical pleuroparenchymal scarring bilaterally.", {"Pulmonary fibrotic sequela": P},
     {"Pulmonary fibrotic sequela": "bilateral"}),
    ("Reticular changes at the bases, possibly early fibrosis.", {"Pulmonary fibrotic sequela": U}, {}),
    ("Known cystic fibrosis.", {}, {}),
    # Pleural effusion
    ("Small left pleural effusion.", {"Pleural effusion": P}, {"Pleural effusion": "left"}),
    ("Bilateral pleural fluid, larger on the right.", {"Pleural effusion": P}, {}),
    ("No pleural effusion.", {"Pleural effusion": N}, {}),
    ("Trace fluid in the right costophrenic recess.", {"Pleural effusion": P}, {"Pleural effusion": "right"}),
    ("The pleural effusion has resolved.", {"Pleural effusion": N}, {}),
    ("Loculated pleural collection on the right.", {"Pleural effusion": P}, {}),
    # Mosaic attenuation pattern
    ("Mosaic attenuation in both lungs, suggestive of small airways disease.",
     {"Mosaic attenuation pattern": P}, {}),
    ("Heterogeneous lung attenuation with a mosaic pattern.", {"Mosaic attenuation pattern": P}, {}),
    ("No mosaic attenuation.", {"Mosaic attenuation pattern": N}, {}),
    ("Air trapping with mosaic perfusion in the lower lobes.", {"Mosaic attenuation pattern": P}, {}),
    ("A mosaic attenuation pattern is not evident.", {"Mosaic attenuation pattern": N}, {}),
    # Peribronchial thickening
    ("The bronchial walls are diffusely thickened.", {"Peribronchial thickening": P}, {}),
    ("Peribronchovascular thickening in both lower lobes.", {"Peribronchial thickening": P}, {}),
    ("No peribronchial thickening.", {"Peribronchial thickening": N}, {}),
    ("Thickening of the bronchial walls in the right lower lobe.", {"Peribronchial thickening": P},
     {"Peribronchial thickening": "right"}),
    ("Mild bronchial wall thickening, possibly related to bronchitis.", {"Peribronchial thickening": P}, {}),
    ("Peribronchial cuffing cannot be excluded.", {"Peribronchial thickening": U}, {}),
    # Consolidation
    ("Dense consolidation with air bronchograms in the right lower lobe.", {"Consolidation": P},
     {"Consolidation": "right"}),
    ("Consolidative opacity in the lingula.", {"Consolidation": P, "Lung opacity": P}, {}),
    ("No consolidation.", {"Consolidation": N}, {}),
    ("Airspace consolidation in the left lower lobe, likely pneumonia.", {"Consolidation": P},
     {"Consolidation": "left"}),
    ("The consolidation has resolved since the prior study.", {"Consolidation": N}, {}),
    ("Possible early consolidation in the posterior segment of the right upper lobe.",
     {"Consolidation": U}, {}),
    # Bronchiectasis
    ("Cylindrical bronchiectasis in the middle lobe.", {"Bronchiectasis": P}, {}),
    ("Traction bronchiectasis at both lung bases.", {"Bronchiectasis": P}, {"Bronchiectasis": "bilateral"}),
    ("No bronchiectasis.", {"Bronchiectasis": N}, {}),
    ("Varicose bronchiectatic changes in the left lower lobe.", {"Bronchiectasis": P},
     {"Bronchiectasis": "left"}),
    ("The bronchi are mildly dilated in the lower lobes.", {"Bronchiectasis": P}, {}),
    # Interlobular septal thickening
    ("Smooth thickening of the interlobular septa in the lower lobes.",
     {"Interlobular septal thickening": P}, {}),
    ("Interlobular septae are thickened bilaterally.", {"Interlobular septal thickening": P}, {}),
    ("No interlobular septal thickening.", {"Interlobular septal thickening": N}, {}),
    ("Crazy paving pattern in the right lower lobe.",
     {"Interlobular septal thickening": P, "Lung opacity": P}, {}),
    ("Septal lines at the lung bases.", {"Interlobular septal thickening": P}, {}),
]

# Batch B: written after the fixes, in a different register (CT-RATE-like translated phrasing mixed
# with US style), and scored once as the held-out figure.
HELDOUT_CASES: list[Case] = [
    # Medical material
    ("Pacemaker leads terminate in the right atrium and right ventricle.", {"Medical material": P}, {}),
    ("A nasogastric tube courses into the stomach.", {"Medical material": P}, {}),
    ("No foreign material or device is identified.", {"Medical material": N}, {}),
    ("Metallic clips are seen in the left axilla from previous lymph node dissection.",
     {"Medical material": P}, {"Medical material": "left"}),
    ("Tracheostomy cannula in place.", {"Medical material": P}, {}),
    # Arterial wall calcification
    ("Atherosclerotic changes are present in the aortic arch.", {"Arterial wall calcification": P}, {}),
    ("Calcified atherosclerotic plaques are seen in the thoracic aorta and its main branches.",
     {"Arterial wall calcification": P}, {}),
    ("No calcified plaques were observed in the aorta.", {"Arterial wall calcification": N}, {}),
    ("Wall calcifications of the descending aorta.", {"Arterial wall calcification": P}, {}),
    ("Aortic calcification is not seen.", {"Arterial wall calcification": N}, {}),
    # Cardiomegaly
    ("Cardiac dimensions are increased.", {"Cardiomegaly": P}, {}),
    ("Cardiomegaly with left ventricular predominance.", {"Cardiomegaly": P}, {}),
    ("Heart dimensions are within normal limits.", {"Cardiomegaly": N}, {}),
    ("The heart size appears slightly increased.", {"Cardiomegaly": P}, {}),
    ("There is no cardiac enlargement.", {"Cardiomegaly": N}, {}),
    # Pericardial effusion
    ("Pericardial fluid reaching 12 mm in its thickest part.", {"Pericardial effusion": P}, {}),
    ("No fluid in the pericardial space.", {"Pericardial effusion": N}, {}),
    ("Minimal pericardial effusion is noted anterior to the right ventricle.", {"Pericardial effusion": P}, {}),
    ("Pericardial thickening or minimal effusion?", {"Pericardial effusion": U}, {}),
    ("The pericardium is normal and there is no effusion.", {"Pericardial effusion": N}, {}),
    # Coronary
    ("Calcific plaques in the coronary arteries.", {"Coronary artery wall calcification": P}, {}),
    ("There are calcifications in the left main and LAD coronary arteries.",
     {"Coronary artery wall calcification": P}, {}),
    ("No calcification was detected in the coronary arteries.", {"Coronary artery wall calcification": N}, {}),
    ("Coronary artery calcific atherosclerosis, moderate.", {"Coronary artery wall calcification": P}, {}),
    ("Circumflex artery calcification is present.", {"Coronary artery wall calcification": P}, {}),
    # Hiatal hernia
    ("A large hiatal hernia is present.", {"Hiatal hernia": P}, {}),
    ("The gastroesophageal junction is herniated above the diaphragm, consistent with a small hiatal hernia.",
     {"Hiatal hernia": P}, {}),
    ("Hiatal hernia is not observed.", {"Hiatal hernia": N}, {}),
    ("Fat-containing Morgagni hernia in the right cardiophrenic angle.", {}, {}),
    ("Questionable small hiatal hernia.", {"Hiatal hernia": U}, {}),
    ("Small hiatal herniation of the stomach.", {"Hiatal hernia": P}, {}),  # added after the first scoring
    # Lymphadenopathy
    ("Lymph nodes of pathological size are observed in the mediastinum, the largest 18 mm.",
     {"Lymphadenopathy": P}, {}),
    ("Bilateral hilar lymphadenopathy.", {"Lymphadenopathy": P}, {"Lymphadenopathy": "bilateral"}),
    ("No lymph node enlargement in the mediastinum or axillae.", {"Lymphadenopathy": N}, {}),
    ("Mildly enlarged right paratracheal lymph node.", {"Lymphadenopathy": P}, {"Lymphadenopathy": "right"}),
    ("Lymph nodes with short axis less than 1 cm, not considered pathological.", {"Lymphadenopathy": N}, {}),
    # Emphysema
    ("Emphysematous areas are observed in both lungs.", {"Emphysema": P}, {"Emphysema": "bilateral"}),
    ("Bullous changes at the left apex.", {"Emphysema": P}, {"Emphysema": "left"}),
    ("There is no evidence of emphysema.", {"Emphysema": N}, {}),
    ("Panlobular emphysema predominantly in the lower lobes.", {"Emphysema": P}, {}),
    ("Mediastinal emphysema is noted.", {}, {}),
    ("Centrilobular emphysema is present in both upper lobes.", {"Emphysema": P}, {}),  # added after scoring
    # Atelectasis
    ("Atelectatic changes in the right middle lobe.", {"Atelectasis": P}, {"Atelectasis": "right"}),
    ("Subsegmental atelectasis in the posterobasal segment of the left lower lobe.", {"Atelectasis": P},
     {"Atelectasis": "left"}),
    ("No atelectatic changes.", {"Atelectasis": N}, {}),
    ("Complete collapse of the left lower lobe.", {"Atelectasis": P}, {"Atelectasis": "left"}),
    ("Discoid atelectasis versus scar in the lingula.", {"Atelectasis": U}, {}),
    # Lung nodule
    ("Millimetric nonspecific nodules in both lungs.", {"Lung nodule": P}, {"Lung nodule": "bilateral"}),
    ("A 9 mm part-solid lesion in the right upper lobe.", {"Lung nodule": P}, {}),
    ("No nodular lesion was detected in the lung parenchyma.", {"Lung nodule": N}, {}),
    ("A 4 cm mass in the right hilum.", {"Lung nodule": P}, {}),
    ("Adrenal nodule on the left.", {}, {}),
    # Lung opacity
    ("Ground-glass densities in the left upper lobe.", {"Lung opacity": P}, {"Lung opacity": "left"}),
    ("Patchy opacities in both lower lobes.", {"Lung opacity": P}, {"Lung opacity": "bilateral"}),
    ("No ground glass areas were seen.", {"Lung opacity": N}, {}),
    ("Nodular ground glass in the right lower lobe.", {"Lung opacity": P, "Lung nodule": P}, {}),
    ("Faint ground glass attenuation, possibly infectious.", {"Lung opacity": P}, {}),
    # Fibrotic sequela
    ("Sequelae fibrotic changes in the right lung apex.", {"Pulmonary fibrotic sequela": P},
     {"Pulmonary fibrotic sequela": "right"}),
    ("Fibrotic band in the left lower lobe.", {"Pulmonary fibrotic sequela": P},
     {"Pulmonary fibrotic sequela": "left"}),
    ("No fibrosis.", {"Pulmonary fibrotic sequela": N}, {}),
    ("Honeycombing and reticulation at both lung bases consistent with fibrosis.",
     {"Pulmonary fibrotic sequela": P}, {}),
    ("Post-inflammatory scar in the right middle lobe.", {"Pulmonary fibrotic sequela": P}, {}),
    # Pleural effusion
    ("Right pleural effusion measuring 3 cm in depth.", {"Pleural effusion": P}, {"Pleural effusion": "right"}),
    ("Effusion is observed in both pleural spaces.", {"Pleural effusion": P}, {}),
    ("There is no pleural fluid.", {"Pleural effusion": N}, {}),
    ("Minimal fluid in the left pleural space.", {"Pleural effusion": P}, {"Pleural effusion": "left"}),
    ("A small pleural effusion on the left cannot be ruled out.", {"Pleural effusion": U}, {}),
    # Mosaic
    ("Mosaic pattern in both lungs.", {"Mosaic attenuation pattern": P}, {}),
    ("Mosaic attenuation pattern is observed, consistent with air trapping.", {"Mosaic attenuation pattern": P}, {}),
    ("There is no mosaic pattern.", {"Mosaic attenuation pattern": N}, {}),
    ("Patchy mosaic perfusion in the right lower lobe.", {"Mosaic attenuation pattern": P}, {}),
    ("Subtle mosaic attenuation may be present.", {"Mosaic attenuation pattern": U}, {}),
    # Peribronchial thickening
    ("Peribronchial thickening is observed in both lungs.", {"Peribronchial thickening": P}, {}),
    ("Thickened bronchial walls in the lower lobes.", {"Peribronchial thickening": P}, {}),
    ("No bronchial wall thickening.", {"Peribronchial thickening": N}, {}),
    ("Mild peribronchial wall thickening in the left lower lobe.", {"Peribronchial thickening": P},
     {"Peribronchial thickening": "left"}),
    ("Bronchial walls appear normal.", {"Peribronchial thickening": N}, {}),
    # Consolidation
    ("Consolidated areas in the right lower lobe.", {"Consolidation": P}, {"Consolidation": "right"}),
    ("Lobar consolidation of the left lower lobe.", {"Consolidation": P}, {"Consolidation": "left"}),
    ("No infiltrative consolidation.", {"Consolidation": N}, {}),
    ("Consolidation versus atelectasis in the posterior basal right lower lobe.",
     {"Consolidation": U, "Atelectasis": U}, {}),
    ("Peripheral consolidations in both lungs.", {"Consolidation": P}, {"Consolidation": "bilateral"}),
    # Bronchiectasis
    ("Bronchiectatic changes in both lower lobes.", {"Bronchiectasis": P}, {"Bronchiectasis": "bilateral"}),
    ("Cystic bronchiectasis in the right middle lobe.", {"Bronchiectasis": P}, {"Bronchiectasis": "right"}),
    ("Bronchiectasis is not present.", {"Bronchiectasis": N}, {}),
    ("Dilatation of the bronchi in the lingula.", {"Bronchiectasis": P}, {}),
    ("Minimal bronchiectasis may be present in the left lower lobe.", {"Bronchiectasis": U}, {}),
    # Septal thickening
    ("Interlobular septal thickening in both lungs.", {"Interlobular septal thickening": P}, {}),
    ("Thickened interlobular septa in the right lower lobe.", {"Interlobular septal thickening": P},
     {"Interlobular septal thickening": "right"}),
    ("No septal thickening.", {"Interlobular septal thickening": N}, {}),
    ("Smooth septal thickening with ground glass opacity, consistent with pulmonary edema.",
     {"Interlobular septal thickening": P, "Lung opacity": P}, {}),
    ("Nodular thickening of the interlobular septa.", {"Interlobular septal thickening": P}, {}),
]


# Batch C: written after every fix above (by a different author, in one sitting, without reading
# ctxray.synth.reports or the rules file) and scored exactly once; never used to change the labeler.
FINAL_CASES: list[Case] = [
    # Medical material
    ("A dual-chamber pacemaker is present with leads in the right heart.", {"Medical material": P}, {}),
    ("Port-a-cath in the left chest wall with the catheter tip in the superior vena cava.",
     {"Medical material": P}, {"Medical material": "left"}),
    ("Prosthetic aortic valve.", {"Medical material": P}, {}),
    ("The endotracheal tube terminates 3 cm above the carina.", {"Medical material": P}, {}),
    ("There are no support devices.", {"Medical material": N}, {}),
    ("Sternotomy wires are noted.", {"Medical material": P}, {}),
    # Arterial wall calcification
    ("Extensive calcific atherosclerosis of the thoracic aorta.", {"Arterial wall calcification": P}, {}),
    ("Minimal aortic arch calcification.", {"Arterial wall calcification": P}, {}),
    ("The aorta is of normal caliber without atherosclerotic calcification.",
     {"Arterial wall calcification": N}, {}),
    ("Calcified plaque at the origin of the left subclavian artery.", {"Arterial wall calcification": P}, {}),
    ("Atheromatous calcifications involving the aortic knob and descending aorta.",
     {"Arterial wall calcification": P}, {}),
    ("Vascular calcifications are absent.", {"Arterial wall calcification": N}, {}),
    # Cardiomegaly
    ("Marked cardiomegaly.", {"Cardiomegaly": P}, {}),
    ("The heart is enlarged with biventricular dilatation.", {"Cardiomegaly": P}, {}),
    ("Normal cardiac size.", {"Cardiomegaly": N}, {}),
    ("Borderline cardiomegaly.", {"Cardiomegaly": U}, {}),
    ("Heart size within normal limits; no pericardial effusion.", {"Cardiomegaly": N, "Pericardial effusion": N},
     {}),
    ("The left atrium and left ventricle are dilated, with an enlarged cardiac silhouette.",
     {"Cardiomegaly": P}, {}),
    # Pericardial effusion
    ("Trace pericardial fluid.", {"Pericardial effusion": P}, {}),
    ("Large circumferential pericardial effusion.", {"Pericardial effusion": P}, {}),
    ("The pericardium is unremarkable without effusion.", {"Pericardial effusion": N}, {}),
    ("A small amount of pericardial effusion may be present.", {"Pericardial effusion": U}, {}),
    ("Fluid is noted in the superior pericardial recess.", {"Pericardial effusion": P}, {}),
    ("No pericardial fluid.", {"Pericardial effusion": N}, {}),
    # Coronary artery wall calcification
    ("Three-vessel coronary artery calcification.", {"Coronary artery wall calcification": P}, {}),
    ("Mild calcification of the left main coronary artery.", {"Coronary artery wall calcification": P}, {}),
    ("Coronary calcium is not identified.", {"Coronary artery wall calcification": N}, {}),
    ("Scattered coronary arterial calcifications.", {"Coronary artery wall calcification": P}, {}),
    ("Calcified plaque in the circumflex artery.", {"Coronary artery wall calcification": P}, {}),
    ("No coronary arterial calcified plaque is seen.", {"Coronary artery wall calcification": N}, {}),
    # Hiatal hernia
    ("Moderate hiatal hernia.", {"Hiatal hernia": P}, {}),
    ("A small hiatus hernia is present.", {"Hiatal hernia": P}, {}),
    ("There is no hiatal hernia.", {"Hiatal hernia": N}, {}),
    ("Large paraoesophageal hernia with an intrathoracic stomach.", {"Hiatal hernia": P}, {}),
    ("Patulous esophagus, possibly with a small hiatal hernia.", {"Hiatal hernia": U}, {}),
    ("Inguinal hernia on the right.", {}, {}),
    # Lymphadenopathy
    ("Bulky mediastinal lymphadenopathy.", {"Lymphadenopathy": P}, {}),
    ("Enlarged left hilar lymph node, 14 mm.", {"Lymphadenopathy": P}, {"Lymphadenopathy": "left"}),
    ("No thoracic adenopathy.", {"Lymphadenopathy": N}, {}),
    ("Prominent but not pathologically enlarged paratracheal nodes.", {"Lymphadenopathy": N}, {}),
    ("Right paratracheal lymph node enlargement, possibly reactive.", {"Lymphadenopathy": P},
     {"Lymphadenopathy": "right"}),
    ("Axillary and mediastinal lymph nodes are not enlarged.", {"Lymphadenopathy": N}, {}),
    # Emphysema
    ("Moderate centrilobular emphysema, upper lobe predominant.", {"Emphysema": P}, {}),
    ("Panlobular emphysema in both lower lobes.", {"Emphysema": P}, {"Emphysema": "bilateral"}),
    ("The lungs show no emphysematous change.", {"Emphysema": N}, {}),
    ("A large bulla in the left upper lobe.", {"Emphysema": P}, {"Emphysema": "left"}),
    ("Mild emphysema cannot be excluded.", {"Emphysema": U}, {}),
    ("Surgical emphysema tracks along the right chest wall.", {}, {}),
    # Atelectasis
    ("Dependent atelectasis in both lung bases.", {"Atelectasis": P}, {"Atelectasis": "bilateral"}),
    ("Linear atelectasis in the lingula.", {"Atelectasis": P}, {}),
    ("Complete collapse of the right lower lobe.", {"Atelectasis": P}, {"Atelectasis": "right"}),
    ("No evidence of atelectasis.", {"Atelectasis": N}, {}),
    ("Plate-like atelectasis at the left base.", {"Atelectasis": P}, {"Atelectasis": "left"}),
    ("Compressive atelectasis adjacent to the pleural effusion.", {"Atelectasis": P, "Pleural effusion": P}, {}),
    # Lung nodule
    ("A 7 mm solid nodule in the right upper lobe.", {"Lung nodule": P}, {"Lung nodule": "right"}),
    ("Several small pulmonary nodules in both lungs, the largest 5 mm.", {"Lung nodule": P},
     {"Lung nodule": "bilateral"}),
    ("No suspicious pulmonary nodules or masses.", {"Lung nodule": N}, {}),
    ("Spiculated mass in the left upper lobe measuring 3.2 cm.", {"Lung nodule": P}, {"Lung nodule": "left"}),
    ("A tiny perifissural nodule along the right minor fissure.", {"Lung nodule": P}, {"Lung nodule": "right"}),
    ("Small right lower lobe nodular density, possibly a nodule.", {"Lung nodule": U}, {}),
    ("A thyroid nodule is incidentally noted.", {}, {}),
    # Lung opacity
    ("Patchy ground-glass opacities in both lungs.", {"Lung opacity": P}, {"Lung opacity": "bilateral"}),
    ("Hazy increased attenuation in the left lower lobe.", {"Lung opacity": P}, {"Lung opacity": "left"}),
    ("No focal airspace opacity.", {"Lung opacity": N}, {}),
    ("Faint ground glass in the right middle lobe, possibly infectious.", {"Lung opacity": P},
     {"Lung opacity": "right"}),
    ("Peripheral ground-glass densities in the lower lobes.", {"Lung opacity": P}, {}),
    ("The lungs are clear.", {"Lung opacity": N}, {}),
    # Pulmonary fibrotic sequela
    ("Fibrotic scarring in the right upper lobe.", {"Pulmonary fibrotic sequela": P},
     {"Pulmonary fibrotic sequela": "right"}),
    ("Parenchymal bands consistent with old scarring in the left lower lobe.",
     {"Pulmonary fibrotic sequela": P}, {}),
    ("Apical fibrotic changes bilaterally.", {"Pulmonary fibrotic sequela": P},
     {"Pulmonary fibrotic sequela": "bilateral"}),
    ("No fibrotic changes in the lungs.", {"Pulmonary fibrotic sequela": N}, {}),
    ("Linear fibrotic strands in the lingula.", {"Pulmonary fibrotic sequela": P}, {}),
    ("Post-inflammatory fibrosis is possible at the right apex.", {"Pulmonary fibrotic sequela": U}, {}),
    # Pleural effusion
    ("Small bilateral pleural effusions.", {"Pleural effusion": P}, {"Pleural effusion": "bilateral"}),
    ("Moderate right-sided pleural effusion.", {"Pleural effusion": P}, {"Pleural effusion": "right"}),
    ("No pleural fluid.", {"Pleural effusion": N}, {}),
    ("A trace left effusion.", {"Pleural effusion": P}, {"Pleural effusion": "left"}),
    ("Loculated fluid collection in the left pleural space.", {"Pleural effusion": P},
     {"Pleural effusion": "left"}),
    ("The pleural spaces are clear.", {"Pleural effusion": N}, {}),
    # Mosaic attenuation pattern
    ("Mosaic perfusion in both lungs.", {"Mosaic attenuation pattern": P}, {}),
    ("Heterogeneous lung attenuation in a mosaic pattern, suggesting small airways disease.",
     {"Mosaic attenuation pattern": P}, {}),
    ("No mosaic attenuation.", {"Mosaic attenuation pattern": N}, {}),
    ("Mosaic attenuation in the lower lobes, likely air trapping.", {"Mosaic attenuation pattern": P}, {}),
    ("Subtle mosaicism in the right lung may reflect air trapping.", {"Mosaic attenuation pattern": U}, {}),
    ("Geographic areas of differing lung attenuation (mosaic pattern) are seen.",
     {"Mosaic attenuation pattern": P}, {}),
    # Peribronchial thickening
    ("Mild bronchial wall thickening in the lower lobes.", {"Peribronchial thickening": P}, {}),
    ("Peribronchial cuffing in the right lower lobe.", {"Peribronchial thickening": P},
     {"Peribronchial thickening": "right"}),
    ("No bronchial wall thickening.", {"Peribronchial thickening": N}, {}),
    ("Diffuse peribronchovascular thickening.", {"Peribronchial thickening": P}, {}),
    ("Thickened bronchial walls, compatible with bronchitis.", {"Peribronchial thickening": P}, {}),
    # Consolidation
    ("Dense consolidation with air bronchograms in the right lower lobe.", {"Consolidation": P},
     {"Consolidation": "right"}),
    ("Left lower lobe consolidation, likely pneumonia.", {"Consolidation": P}, {"Consolidation": "left"}),
    ("No consolidation.", {"Consolidation": N}, {}),
    ("Airspace consolidation in the lingula.", {"Consolidation": P}, {}),
    ("Patchy consolidative opacities bilaterally.", {"Consolidation": P}, {"Consolidation": "bilateral"}),
    ("Early consolidation is not excluded in the right middle lobe.", {"Consolidation": U}, {}),
    # Bronchiectasis
    ("Cylindrical bronchiectasis in the right middle lobe.", {"Bronchiectasis": P}, {"Bronchiectasis": "right"}),
    ("Traction bronchiectasis in the lower lobes.", {"Bronchiectasis": P}, {}),
    ("No bronchiectasis.", {"Bronchiectasis": N}, {}),
    ("The bronchi are dilated in the left lower lobe.", {"Bronchiectasis": P}, {"Bronchiectasis": "left"}),
    ("Varicose bronchiectasis of both lower lobes.", {"Bronchiectasis": P}, {"Bronchiectasis": "bilateral"}),
    ("Mild bronchial dilatation, possibly early bronchiectasis.", {"Bronchiectasis": U}, {}),
    # Interlobular septal thickening
    ("Interlobular septal thickening at both bases.", {"Interlobular septal thickening": P},
     {"Interlobular septal thickening": "bilateral"}),
    ("Thickened interlobular septa in the right lower lobe.", {"Interlobular septal thickening": P},
     {"Interlobular septal thickening": "right"}),
    ("No septal thickening is seen.", {"Interlobular septal thickening": N}, {}),
    ("Crazy paving pattern in the left lower lobe.", {"Interlobular septal thickening": P, "Lung opacity": P},
     {}),
    ("Septal lines are present peripherally.", {"Interlobular septal thickening": P}, {}),
    ("Reticular thickening of the interlobular septa suggests interstitial edema.",
     {"Interlobular septal thickening": P}, {}),
    # mixed reports
    ("No pleural effusion, pneumothorax or consolidation. Heart size normal.",
     {"Pleural effusion": N, "Consolidation": N, "Cardiomegaly": N}, {}),
    ("Emphysema and a new 9 mm nodule in the left lower lobe. No lymphadenopathy.",
     {"Emphysema": P, "Lung nodule": P, "Lymphadenopathy": N}, {"Lung nodule": "left"}),
]


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def score_cases(cases: list[Case]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Per-label F1 under both uncertainty policies, status accuracy, and the misses.

    A label's truth/prediction is "positive" (u=0) or "positive or uncertain" (u=1) over every case;
    labels a case does not list are expected absent (a negative is as good as absent there).

    Returns:
        ({label: {"f1_u0", "f1_u1", "status_acc", "n"}}, one line per miss).
    """
    names = label_names("ct")
    counts = {n: {"u0": [0, 0, 0], "u1": [0, 0, 0], "ok": 0, "n": 0} for n in names}
    failures = []
    for text, expected, sides in cases:
        got = label_report(text, "ct")
        for name in names:
            want, have = expected.get(name, "absent"), got[name]
            for pol, pos in (("u0", {P}), ("u1", {P, U})):
                t, p = want in pos, have in pos
                c = counts[name][pol]
                c[0], c[1], c[2] = c[0] + (t and p), c[1] + (p and not t), c[2] + (t and not p)
            if name in expected:
                counts[name]["n"] += 1
                counts[name]["ok"] += want == have
            if want != have and not (want == "absent" and have == N):
                failures.append(f"{name}: want {want}, got {have}: {text}")
        for name, side in sides.items():
            found = {m.laterality for m in find_mentions(text, "ct") if m.label == name}
            if side not in found:
                failures.append(f"{name}: want side {side}, got {sorted(map(str, found))}: {text}")
    table = {n: {"f1_u0": _f1(*c["u0"]), "f1_u1": _f1(*c["u1"]), "status_acc": c["ok"] / max(c["n"], 1),
                 "n": c["n"]} for n, c in counts.items()}
    return table, failures


def _macro(table: dict[str, dict[str, float]], key: str) -> float:
    return sum(r[key] for r in table.values()) / len(table)


@pytest.mark.parametrize("cases", [DEV_CASES, HELDOUT_CASES, FINAL_CASES], ids=["dev", "heldout", "final"])
def test_every_label_has_five_or_more_phrasings(cases):
    n = {name: sum(name in exp for _, exp, _ in cases) for name in label_names("ct")}
    assert min(n.values()) >= 5, n


def test_ct_labeler_on_dev_phrasings():
    table, failures = score_cases(DEV_CASES)
    assert _macro(table, "f1_u0") >= 0.95 and min(r["f1_u0"] for r in table.values()) >= 0.8, failures
    assert len(failures) <= 2, "\n".join(failures)


def test_ct_labeler_on_heldout_phrasings():
    table, failures = score_cases(HELDOUT_CASES)
    # floors a little under the figures measured once (see the module docstring): a regression guard
    assert _macro(table, "f1_u0") >= 0.85, failures
    assert _macro(table, "status_acc") >= 0.8, failures


def test_ct_labeler_on_final_heldout_phrasings():
    table, failures = score_cases(FINAL_CASES)
    # scored once at 0.946 (u=0), every label >= 0.80: floors a little under, a regression guard
    assert _macro(table, "f1_u0") >= 0.92, failures
    assert min(r["f1_u0"] for r in table.values()) >= 0.8, failures
    assert len(failures) <= 12, "\n".join(failures)


@pytest.mark.parametrize("text", ["Umbilical hernia containing fat.", "Thyroid nodule in the left lobe.",
                                  "Subcutaneous emphysema in the left chest wall.", "Known cystic fibrosis.",
                                  "Mediastinal emphysema is noted.", "Adrenal nodule on the left."])
def test_lookalikes_outside_the_lung_name_no_label(text):
    assert all(s == "absent" for s in label_report(text, "ct").values())


def _print_table(title: str, cases: list[Case]) -> None:
    tab, fails = score_cases(cases)
    print(f"\n{title}\n\n| label | cases | F1 (u=0) | F1 (u=1) | status accuracy |\n|---|---:|---:|---:|---:|")
    for label, row in tab.items():
        print(f"| {label} | {row['n']} | {row['f1_u0']:.3f} | {row['f1_u1']:.3f} | {row['status_acc']:.3f} |")
    print(f"| **macro** | {len(cases)} | {_macro(tab, 'f1_u0'):.3f} | {_macro(tab, 'f1_u1'):.3f} | "
          f"{_macro(tab, 'status_acc'):.3f} |")
    print("\n".join(["", "Misses:"] + fails))


if __name__ == "__main__":
    _print_table("Batch A (development)", DEV_CASES)
    _print_table("Batch B (held out)", HELDOUT_CASES)
    _print_table("Batch C (final held-out set, scored once)", FINAL_CASES)

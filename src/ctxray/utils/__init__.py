"""Small shared helpers: atomic file writes, logging, progress, seeding."""

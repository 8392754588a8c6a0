"""`lggseg predict`: the registered or local model on new scans, the per-patient report pages and their
templates. May import everything but cli and pipeline."""

"""Pattern detection from sheet outcomes, output extraction, matching and guidance strings."""

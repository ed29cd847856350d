"""The demo zoos: built-in bases, the datasets, and the builder that trains the zoo."""
from pathlib import Path

# The zoo the app and the CLI open when given none: SmolLM2-135M finetunes (bench/README.md says why this one).
DEMO_CATALOG = Path(__file__).resolve().parents[2] / "data" / "demo-smollm2" / "catalog.csv"

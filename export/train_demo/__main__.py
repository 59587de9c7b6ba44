"""``python -m edgevid_export.train_demo``."""
from .cli import main

main()

"""`python -m tasks.train JOB.json` (also under torchrun): see tasks/train/__init__.py."""

from tasks.train import main

raise SystemExit(main())

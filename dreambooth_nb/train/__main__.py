"""`python -m dreambooth_nb.train`: the command line front end."""

from .cli import main

raise SystemExit(main())

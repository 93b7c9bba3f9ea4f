"""``python -m diffattn.cli ...`` (what torchrun runs): the ``diffattn`` command."""

from . import main

raise SystemExit(main())

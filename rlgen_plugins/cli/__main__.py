"""``python -m rlgen_plugins.cli``: the ``rlgen`` command."""
import sys

from rlgen_plugins.cli.app import main

sys.exit(main())

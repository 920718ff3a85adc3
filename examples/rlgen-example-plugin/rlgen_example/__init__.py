"""An example rlgen plugin package (see plugin.py for the hooks)."""

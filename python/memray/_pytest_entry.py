"""The `pytest11` entry point `memray`: it loads memray.pytest_plugin by name, so every way of
asking for the plugin (this entry point, `-p pytest_memray`, `-p pytest_memray.plugin`,
`pytest_plugins = ["pytest_memray"]`, `-p memray.pytest_plugin`) registers it once. Naming
the plugin module here directly would register one module under two names, which pytest
refuses. `-p no:memray` blocks this entry point and so the plugin."""

pytest_plugins = ["memray.pytest_plugin"]

"""pytest-memray's import name, for suites written against it: `-p pytest_memray`,
`pytest_plugins = ["pytest_memray"]` and `from pytest_memray import Stack, LeaksFilterFunction`
keep working. The plugin is memray.pytest_plugin, loaded once by name whichever way it is asked for."""

from memray._pytest_limits import LeakedObjectsFilterFunction, LeaksFilterFunction, Stack, StackFrame

pytest_plugins = ["memray.pytest_plugin"]

__all__ = ["LeakedObjectsFilterFunction", "LeaksFilterFunction", "Stack", "StackFrame"]

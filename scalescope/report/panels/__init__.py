"""The built-in report panels, grouped by domain; importing this package registers them (see
:mod:`scalescope.report.core`). A new domain is one module here plus one line below."""

from . import emergence, generalization, instruments, laws, probes, quanta  # noqa: F401 - the registry lines: each module registers its panels

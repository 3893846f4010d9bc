"""Go text/template for ``weave-router report -f``: the engine lives with the router
(``router/control/template.py``), which renders ``GET /report?format=`` as Weave's
does; this name is kept for the CLI and its tests."""

from __future__ import annotations

from router.control.govalues import go_format, go_json
from router.control.template import FUNCTIONS, Template, TemplateError, render

__all__ = ["FUNCTIONS", "Template", "TemplateError", "go_format", "go_json", "render"]

"""OpenAI's template strings: ``{{item.<key>}}`` and ``{{sample.<field>}}``, nested keys by dots.

One implementation, used by graders (here and in reinforcement fine-tuning) and by eval runs'
``input_messages``. A value that is not a string is written as JSON. A reference to a key the item
does not have is an error naming it, never an empty string: a typo would otherwise grade every
answer against nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_REF = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools", "choices")
"""What ``{{sample.*}}`` may name."""


class TemplateError(ValueError):
    """A reference that names nothing: ``str(e)`` says which and why."""


def references(template: str) -> list[str]:
    """The dotted paths a template references, in order."""
    return [m.group(1) for m in _REF.finditer(template)]


def check(template: str) -> None:
    """Raise ``TemplateError`` for a reference outside ``item.*`` and ``sample.<field>``."""
    for path in references(template):
        head, _, rest = path.partition(".")
        if head == "item" and rest:
            continue
        if head == "sample" and rest.split(".")[0] in SAMPLE_FIELDS:
            continue
        raise TemplateError(
            f"{{{{{path}}}}}: a template names item.<key> or sample.<field> ({', '.join(SAMPLE_FIELDS)})"
        )


def lookup(path: str, namespaces: Mapping[str, Any]) -> Any:
    head, *keys = path.split(".")
    if head not in namespaces:
        raise TemplateError(f"{{{{{path}}}}}: there is no {head!r} here (a template names item.* or sample.*)")
    value = namespaces[head]
    for key in keys:
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise TemplateError(f"{{{{{path}}}}}: the {head} has no {key!r}")
    return value


def render(template: str, namespaces: Mapping[str, Any]) -> str:
    """``template`` with each reference replaced by its value (JSON where it is not a string)."""

    def one(m: re.Match[str]) -> str:
        value = lookup(m.group(1), namespaces)
        return value if isinstance(value, str) else json.dumps(value)

    return _REF.sub(one, template)


def sample_namespace(output_text: str, *, json_expected: bool = False, tools: Any = None) -> dict[str, Any]:
    """``sample`` for a model's answer: ``output_json`` when the answer is JSON (always tried by the
    graders endpoint, as OpenAI does; in eval runs only with a JSON ``response_format``)."""
    sample: dict[str, Any] = {"output_text": output_text, "output_tools": tools or [], "choices": []}
    try:
        sample["output_json"] = json.loads(output_text)
    except ValueError:
        if json_expected:
            sample["output_json"] = None
    return sample

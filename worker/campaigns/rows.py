"""A campaign's template and the checks of each recipient row (the producer runs them while it streams rows in)."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker import sms
from worker.errors import ValidationError


class Template:
    """A message template with ``{name}`` fields, filled from each recipient's columns.

    Only plain names are allowed: ``{0}``, ``{a.b}``, ``{a[0]}`` and format specs would let a CSV reach into
    Python objects or fail in ways a row error cannot name.
    """

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValidationError("template", "a campaign needs a template text")
        self.text = text
        self.fields: list[str] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValidationError("template", f"not a valid template: {exc} (write {{{{ and }}}} for braces)") \
                from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if not name.isidentifier() or spec or conversion:
                raise ValidationError("template", f"fields are plain names like {{first_name}} (got {{{name}}})")
            self.fields.append(name)

    def render(self, values: Mapping[str, Any]) -> str:
        """The text for one recipient; raises KeyError naming the first missing (or empty) variable."""
        found = {}
        for name in self.fields:
            value = values.get(name)
            if value is None or value == "":
                raise KeyError(name)
            found[name] = value
        return self.text.format_map(found)


@dataclass(frozen=True)
class RowError:
    line: int
    phone: str
    field: str
    error: str


def check_row(template: Template, row: Mapping[str, Any], *, phone_column: str, has_media: bool,
              line: int) -> tuple[str, str] | RowError:
    """``(phone, text)`` of a good row, or what is wrong with it."""
    phone = str(row.get(phone_column) or "").strip()
    if not sms.is_e164(phone):
        return RowError(line, phone, phone_column, f"not an E.164 number like +13125550123 ({phone!r})")
    try:
        text = template.render(row)
    except KeyError as exc:
        return RowError(line, phone, "template", f"no value for {{{exc.args[0]}}}")
    if not text.strip() and not has_media:
        return RowError(line, phone, "template", "renders to an empty message")
    # 330 characters fit 10 parts in any encoding: only longer texts need counting.
    if len(text) > 330 and not has_media and sms.segments(text).parts > sms.MAX_PARTS:
        return RowError(line, phone, "template", f"renders to {sms.segments(text).parts} SMS parts; "
                                                 f"Telnyx allows {sms.MAX_PARTS}")
    return phone, text

"""YAML in for the backends: PyYAML's safe loader without aliases.

The YAML lorafile reads (a legacy SimpleTuner YAML, an accelerate config) never needs anchors
and aliases, and an alias bomb (`b: [*a, *a, ...]` nested ten deep) is a few hundred bytes that
expand to billions of items when anything walks or prints the value: the import hung (issue 12).
An alias is therefore a YAML error, reported like any syntax error. PyYAML is imported on first
use, so the compile path pays for it only when it reads YAML.
"""

from __future__ import annotations

from functools import cache


class YAMLError(ValueError):
    """Bad YAML (an alias too), with PyYAML's message on one line; callers catch this without
    importing PyYAML."""


def load(text: str) -> object:
    """`yaml.safe_load(text)`, except that an alias is an error; raises `YAMLError`."""
    import yaml

    try:
        return yaml.load(text, Loader=_loader())
    except yaml.YAMLError as err:
        raise YAMLError(" ".join(str(err).split())) from err


@cache
def _loader():
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not supported", event.start_mark
                )
            return super().compose_node(parent, index)

    return NoAliasLoader

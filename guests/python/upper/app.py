"""A transform in Python: record values upper-cased, with the deploy's
`suffix` config appended. A value that is not UTF-8 fails its batch, which
goes to the dead-letter topic with the reason.

    componentize-py -d ../../../wit -w transform componentize app -o upper.wasm
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

# The instance's configuration, set once by `init`.
suffix = ""


class WitWorld(wit_world.WitWorld):
    def init(self, config):
        global suffix
        suffix = dict(config).get("suffix", "")

    def process(self, batch):
        out = []
        for r in batch:
            value = r.value
            if value is not None:
                try:
                    value = (value.decode("utf-8").upper() + suffix).encode("utf-8")
                except UnicodeDecodeError as e:
                    raise Err(f"offset {r.offset}: not UTF-8: {e}")
            out.append(
                types.OutputRecord(
                    output=0,
                    key=r.key,
                    value=value,
                    headers=r.headers,
                    timestamp=r.timestamp,
                )
            )
        return out

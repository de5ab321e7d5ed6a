"""``skyedge``: the device-side command line (installed with the package; its runtimes come
with the ``device`` extra, no TensorFlow).

Subcommands: ``classify`` (label your own images with an exported model; see
``device.classify``). ``skyedge COMMAND --help`` shows each one's options.
"""
from __future__ import annotations

import sys

from device.command import Exit

COMMANDS = {"classify": ("device.classify", "label images with an exported model (GALAXY / QSO / STAR)")}


def main(argv: list[str] | None = None) -> int:
    """Run ``skyedge COMMAND ...``; the exit status."""
    import importlib

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        usage = "usage: skyedge COMMAND [options]\n\ncommands:\n" + "".join(
            f"  {name:<10} {text}\n" for name, (_module, text) in COMMANDS.items())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"{usage}\nerror: unknown command {argv[0]!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
            return Exit.BAD_INPUT
        print(usage, file=sys.stderr if not argv else sys.stdout)
        return Exit.OK if argv else Exit.BAD_INPUT
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:], prog=f"skyedge {argv[0]}"))


if __name__ == "__main__":
    sys.exit(main())

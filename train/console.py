"""A quiet console: TensorFlow's start-up chatter hidden unless asked for.

TensorFlow prints oneDNN notes, CUDA-driver probes and absl banners on stderr when it is
imported, and tf.function retracing warnings while a sweep runs; none of it is about the
user's job. Each command's ``main`` calls ``quiet_tensorflow(args.verbose)`` before anything
imports TensorFlow: the import's stderr is captured and shown only if the import fails, the
C++ log level is set to errors only (unless the user set ``TF_CPP_MIN_LOG_LEVEL``), and
TensorFlow's Python logger keeps errors only. ``--verbose`` leaves everything as TensorFlow
prints it.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from device.command import native_output_hidden

VERBOSE_HELP = "show TensorFlow's own start-up and warning messages (hidden by default)"


_quiet = False  # set by quiet_tensorflow; read by hidden_output


def command_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of a ``python -m train...`` command: its module docstring, line breaks kept,
    is the ``--help`` description."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def hidden_output():
    """Hide what C++ code prints on stdout and stderr inside the block (the TFLite converter's
    and interpreter's notes), when the command is quiet; shown after all if the block fails."""
    return native_output_hidden(_quiet)


def quiet_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow and tf_keras with their start-up messages hidden (unless ``verbose``)."""
    global _quiet
    _quiet = not verbose
    if verbose or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
            import tf_keras  # noqa: F401  (its import prints too)
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    tf.get_logger().setLevel("ERROR")

"""Errors in ComfyUI's shapes, with a readable rendering for the terminal."""

from __future__ import annotations

import logging
import sys
import unicodedata


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (ESC, BEL, C1 codes...) written as escapes
    such as ``\\x1b``, so a workflow's names cannot move the cursor or set the clipboard (OSC 52).
    Line breaks and tabs stay."""
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else repr(c)[1:-1] for c in text)


class PrintableLogHandler(logging.Handler):
    """Log lines to the current stderr through ``printable`` (nodes log names from the workflow)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(printable(self.format(record)) + "\n")
        except Exception:  # logging must never break the run; report as logging does
            self.handleError(record)


def escape_logs(logger_name: str = "loralab") -> None:
    """Route a logger's lines through ``PrintableLogHandler`` (once per process)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(h, PrintableLogHandler) for h in logger.handlers):
        logger.addHandler(PrintableLogHandler())


class WorkflowError(Exception):
    """The workflow cannot run as given (ComfyUI's /prompt 400 body). Exit code 2."""

    exit_code = 2

    def __init__(self, error: dict, node_errors: dict | None = None, titles: dict | None = None):
        self.error = error
        self.node_errors = node_errors or {}
        self.titles = titles or {}  # node id -> title, for the readable message only
        super().__init__(self.render())

    def to_json(self) -> dict:
        return {"error": self.error, "node_errors": self.node_errors}

    def render(self) -> str:
        lines = [self.error["message"] + (f": {self.error['details']}"
                                          if self.error.get("details") and not self.node_errors else "")]
        for node_id, entry in self.node_errors.items():
            name = node_label(node_id, entry["class_type"], self.titles.get(node_id))
            for err in entry["errors"]:
                lines.append(f"  {name}: {err['message']}: {err['details']}")
        return "\n".join(lines)


def node_label(node_id: str, class_type: str, title: str | None) -> str:
    """How messages name a node: ``node 5 (LoRALabGenerate, 'Generate A')``."""
    return f"node {node_id} ({class_type}" + (f", '{title}'" if title else "") + ")"


def invalid_prompt(message: str, details: str = "") -> WorkflowError:
    return WorkflowError({"type": "invalid_prompt", "message": message, "details": details,
                          "extra_info": {}})


class NodeExecutionError(Exception):
    """A node raised while running (ComfyUI's ``execution_error`` message). Exit code 1."""

    exit_code = 1

    def __init__(self, node_id: str, class_type: str, title: str | None, exc: BaseException):
        self.node_id, self.class_type, self.title, self.exc = node_id, class_type, title, exc
        super().__init__(f"{node_label(node_id, class_type, title)} failed: {type(exc).__name__}: {exc}")

    def to_json(self) -> dict:
        import traceback

        return {"node_id": self.node_id, "node_type": self.class_type,
                "exception_message": str(self.exc), "exception_type": type(self.exc).__name__,
                "traceback": traceback.format_exception(self.exc)}

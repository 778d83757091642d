"""harness: a webhook gate for chatbot flows, and a scenario harness that drives it.

The gate (``Gate``) holds bots and conversations and decides every webhook call and timeout;
``create_app`` puts it behind HTTP (quart-trio); ``run_scenario`` drives simulated
conversations against it, in virtual time in-process or in real time against a live server,
and returns one row per conversation as a pandas DataFrame::

    import harness
    frame = harness.run_scenario("scenarios/payment.toml")
    harness.summarize(frame)

The names below are imported on first use (PEP 562 ``__getattr__``): ``import harness.cli``
must not pay for pandas, numpy and Quart before the command line has even been parsed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from .core.bots import Bot, InvalidBot, load_bot, parse_bot
    from .core.errors import Refused
    from .core.gate import Gate
    from .core.signing import sign, verify
    from .runner import (
        InvalidScenario,
        RunError,
        load_results,
        load_scenario,
        run_scenario,
        save_results,
        summarize,
    )
    from .web import create_app, serve

# public name -> the module that defines it
_HOMES = {
    "Bot": ".core.bots", "InvalidBot": ".core.bots", "load_bot": ".core.bots", "parse_bot": ".core.bots",
    "Refused": ".core.errors", "Gate": ".core.gate", "sign": ".core.signing", "verify": ".core.signing",
    "InvalidScenario": ".runner", "RunError": ".runner", "load_results": ".runner", "load_scenario": ".runner",
    "run_scenario": ".runner", "save_results": ".runner", "summarize": ".runner",
    "create_app": ".web", "serve": ".web",
}

__all__ = [
    "Bot",
    "Gate",
    "InvalidBot",
    "InvalidScenario",
    "Refused",
    "RunError",
    "create_app",
    "load_bot",
    "load_results",
    "load_scenario",
    "parse_bot",
    "run_scenario",
    "save_results",
    "serve",
    "sign",
    "summarize",
    "verify",
]


__getattr__ = lazy_exports(__name__, _HOMES)

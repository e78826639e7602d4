"""Named, seeded evaluation scenarios (workload + engine + metrics), listed by ``servegym scenarios``.

Importing the package registers every built-in scenario: VTC's suites (``vtc``), DLPM's
and D²LPM's (``dlpm``), LTR's (``ltr``) and a tiny ``smoke`` pair for quick checks::

    from envs.scenarios import get_scenario
    specs = get_scenario("vtc-overload").generate(seed=0)
"""

from envs.scenarios.registry import (FAIRNESS_COLUMNS, THROUGHPUT_COLUMNS, Scenario, UnknownScenarioError,
                                     get_scenario, list_scenarios, register_scenario)
from envs.scenarios import dlpm as _dlpm  # noqa: F401,E402  (registers)
from envs.scenarios import ltr as _ltr  # noqa: F401,E402  (registers)
from envs.scenarios import smoke as _smoke  # noqa: F401,E402  (registers)
from envs.scenarios import vtc as _vtc  # noqa: F401,E402  (registers)

__all__ = ["Scenario", "UnknownScenarioError", "register_scenario", "get_scenario", "list_scenarios",
           "THROUGHPUT_COLUMNS", "FAIRNESS_COLUMNS"]

"""Guard the public surface: what notebooks and users import from `harness`."""

import harness


def test_public_names_are_exported_and_exist() -> None:
    expected = {"Bot", "Gate", "InvalidBot", "InvalidScenario", "Refused", "RunError", "create_app", "load_bot",
                "load_results", "load_scenario", "parse_bot", "run_scenario", "save_results", "serve", "sign",
                "summarize", "verify"}
    assert set(harness.__all__) == expected
    for name in expected:
        assert getattr(harness, name) is not None

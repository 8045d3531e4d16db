"""Limits and the control law: pure functions of readings, limits and time.

No trio, sockets, clock or device/utility imports here (the architecture forbids it): the app
passes `now` and every input, and keeps the returned state. Modules: `limits` (sources, merge,
config parsing), `average` (rolling mean), `law` (the control law), `battery` (batteries in the
law, and the charge planner), `failsafe` (quiet meter, unreachable inverters), `plant` (a
simulated site for tests and benchmarks), `scenario` (random closed-loop scenarios and the
safety rules checked in them). See docs/control.md.
"""

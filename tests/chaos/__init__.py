"""Chaos scenarios of CHAOS-PLAN.md: seeded, deadline-bounded, behind the ``chaos`` marker."""

"""The live demo's engine: worker processes, their tasks, and the counters (``DemoPool``)."""

"""What a run shows people and CI: stage recording, --fail-if conditions, charts and the HTML page.

``recorder`` (stats per pass, fidelity per lossy stage) and ``failif`` need only the core;
``charts`` and ``html`` need matplotlib (the optional ``[report]`` extra) and import it lazily.
"""

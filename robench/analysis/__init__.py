"""Analyses beyond accuracy: loss landscape, stability (Lyapunov, Jacobian), the reference noise
protocol, plots and the static HTML report. Each module has one job; none imports the CLI."""

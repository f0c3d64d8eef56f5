"""The run: its config, run folder, data, stages, pipeline, report and plot."""

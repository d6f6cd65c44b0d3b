"""Where pixels come from (sources) and where results go (sinks)."""

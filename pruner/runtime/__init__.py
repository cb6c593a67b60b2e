"""Where and how the work runs: device and dtype choice, accelerate dispatch (``devices``), and memory
measurement (``memory``)."""

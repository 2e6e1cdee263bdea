"""One line describing the machine a benchmark ran on (platform, CPU model, cores, Python)."""
import os
import platform


def describe():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{platform.platform()}, {cpu}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}")

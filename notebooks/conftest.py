"""pytest settings for the notebook checks (`pytest --nbval-lax notebooks/`)."""

# After a cell finishes, nbval waits at most 5 s for each of its output messages and fails the cell
# when one is late; on a machine busy with other work the kernel can take longer to send them.
OUTPUT_TIMEOUT_S = 120


def pytest_collection_modifyitems(items: list) -> None:
    """Give every nbval cell OUTPUT_TIMEOUT_S to deliver its outputs (the cell's own limit is unchanged)."""
    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = OUTPUT_TIMEOUT_S

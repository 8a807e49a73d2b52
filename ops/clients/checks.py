"""What the client checks share: an assertion that counts itself."""

count = 0


def check(cond, what):
    """Fails the run with `what` unless `cond`; counts the check."""
    global count
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    count += 1

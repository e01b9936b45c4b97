"""Lottery-ticket pruning: global-magnitude masks (masks.py) and the schedule with
rewinding (lottery.py)."""

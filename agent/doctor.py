"""placeholder"""
from __future__ import annotations
import argparse
def cmd_doctor(args: argparse.Namespace) -> int:
    raise NotImplementedError

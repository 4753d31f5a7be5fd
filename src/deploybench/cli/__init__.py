"""Thin argparse front ends; every command calls a library function."""

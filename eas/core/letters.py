"""The letters that name multiple-choice options, by index: option 0 is A.

A module of its own, without torch, so the data schema can share it cheaply.
"""

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

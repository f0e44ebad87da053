"""Helpers shared by the tests (not tests themselves): runs, exports, doctor subjects, numerics."""

//! Faults on the write path: placeholder replaced below.

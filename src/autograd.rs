//! Layer-level autograd tape.

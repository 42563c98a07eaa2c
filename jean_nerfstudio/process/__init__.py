"""`jean-process`: a talking-head video in, a JEAN training dataset out (named, cached, resumable stages)."""

package l4

// SetIsolation turns the checks on endpoints' frames on or off: the
// benchmarks' baseline runs without them. Call it before frames flow.
func SetIsolation(s *Switch, on bool) { s.noIsolation = !on }

// Package memory is an in-process switch port for tests and benchmarks:
// frames are handed in and read out through Go calls, without a device.
// Other packages' tests import it the way wireguard-go's tests import
// tun/tuntest. It never decides where a frame goes.
package memory

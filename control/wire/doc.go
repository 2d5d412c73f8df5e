// Package wire is the codec of usnetd's control protocol: the message types
// (requests RequestUDS, RequestNetmapPipe, AddMatch, RemoveMatch,
// QueryUsedPorts, DeleteClient, QueryStatus, RequestSHM, QueryPortsInUse;
// answers "OK", "ER", "$", UsedPorts, Status, PortsInUse; the rule a
// client states, Match), their encoding (EncodeRequest, EncodeAnswer,
// EncodeUsedPorts, EncodeStatus, EncodePortsInUse) and their
// strict decoding (DecodeRequest, DecodeAnswer), byte-compatible with the
// original's serde_json messages. It also holds DefaultSocketPath.
//
// It imports only the standard library and internal/ipproto (the protocol
// numbers' names for Match.String, itself standard library only; TestDeps
// keeps it so), so that a program that speaks the protocol
// (control/client, usnet) does not pull in the server, the backends or the
// eBPF firewall. The server is package control, the Go
// client control/client.
//
// Decoding never panics and bounds what it reads (MaxMessageSize,
// MaxAnswerSize); every error is a *DecodeError wrapping one of the Err*
// sentinels. wire.go says where it differs from the original, on purpose.
// FuzzDecodeRequest and FuzzDecodeAnswer fuzz both decoders, and
// TestSerdeOracle compares DecodeRequest with serde_json itself
// (testdata/serde-oracle).
package wire

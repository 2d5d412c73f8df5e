package daemon

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/usnetd/usnetd/backends/uds"
	"github.com/usnetd/usnetd/internal/config"
	l4 "github.com/usnetd/usnetd/switch"
)

// pipe is one STATIC_PIPES entry: a Unix datagram socket bound at
// PIPE_DIR/IF-PROTO-PORT[-REMOTEIP] (uds.Listen), an endpoint port of its
// interface's pipeline for the daemon's lifetime, owning the entry's rule
// on each of the interface's addresses, in the switch's table and in the
// firewall's endpoint-rule map. What the stack behind it sends passes the
// isolation checks like any endpoint's (its port is a PortEndpoint).
type pipe struct {
	spec  config.PortSpec
	port  *uds.Port
	owner l4.Owner
	keys  []l4.Key // its rules now; the domain's mu guards them
}

// openPipes binds the STATIC_PIPES sockets and registers their rules.
// Every entry needs an address on its interface now (like DEBUG_PORTS).
func (d *daemon) openPipes() error {
	if len(d.cfg.StaticPipes) == 0 {
		return nil
	}
	if err := os.MkdirAll(d.cfg.PipeDir, 0o755); err != nil {
		return fmt.Errorf("PIPE_DIR=%q: %w", d.cfg.PipeDir, err)
	}
	gid, perm := -1, os.FileMode(0o600)
	if d.cfg.HasAllowGID {
		gid, perm = int(d.cfg.AllowGID), 0o660
	}
	for _, s := range d.cfg.StaticPipes {
		dom := d.domainOf(s.Interface)
		if dom == nil {
			return fmt.Errorf("STATIC_PIPES=%q: interface %s is not claimed", s.String(), s.Interface)
		}
		path := d.cfg.PipePath(s)
		port, err := uds.Listen(path, perm, gid, uds.Options{Name: "pipe " + s.PipeName()})
		if err != nil {
			return fmt.Errorf("STATIC_PIPES=%q: %w", s.String(), err)
		}
		owner, err := dom.p.AddPort(port)
		if err != nil {
			port.Close()
			return fmt.Errorf("STATIC_PIPES=%q: %w", s.String(), err)
		}
		p := &pipe{spec: s, port: port, owner: owner}
		dom.mu.Lock()
		dom.pipes = append(dom.pipes, p)
		err = d.pipeRules(dom, p, dom.addrs)
		if err == nil && len(p.keys) == 0 {
			err = fmt.Errorf("interface %s has no address for it", dom.ifname)
		}
		if err != nil {
			dom.mu.Unlock()
			return fmt.Errorf("STATIC_PIPES=%q: %w", s.String(), err)
		}
		keys := slices.Clone(p.keys)
		dom.mu.Unlock()
		d.log.Info().Str("interface", dom.ifname).Str("path", path).Str("pipe", s.String()).
			Uint32("port", uint32(owner.Port)).Stringers("rules", keyStringers(keys)).Msg("static pipe ready")
	}
	return nil
}

// pipeRules makes p's rules those of its entry on addresses a: it adds the
// new ones (table, then firewall) and removes those of addresses that
// went. The caller holds dom.mu.
func (d *daemon) pipeRules(dom *domain, p *pipe, a ifAddrs) error {
	keys, err := specKeys(p.spec, a)
	if err != nil {
		return err
	}
	fw := endpointPorts{dom}
	var errs []error
	have := keys[:0:0]
	for _, k := range keys {
		if slices.Contains(p.keys, k) {
			have = append(have, k)
			continue
		}
		if err := dom.sw.Table.Insert(l4.Rule{Key: k, Owner: p.owner, Kind: l4.Registered, Sticky: true}); err != nil {
			errs = append(errs, fmt.Errorf("rule %v: %w", k, err))
			continue
		}
		if err := fw.AddEndpointPort(k); err != nil {
			dom.sw.Table.Remove(k, p.owner.Port)
			errs = append(errs, fmt.Errorf("rule %v into the firewall: %w", k, err))
			continue
		}
		have = append(have, k)
	}
	for _, k := range p.keys {
		if !slices.Contains(have, k) {
			dom.sw.Table.Remove(k, p.owner.Port)
			if err := fw.RemoveEndpointPort(k); err != nil {
				errs = append(errs, err)
			}
		}
	}
	p.keys = have
	return errors.Join(errs...)
}

// followPipes moves the pipes' rules to the interface's new addresses. The
// caller holds dom.mu.
func (d *daemon) followPipes(dom *domain, a ifAddrs) error {
	var errs []error
	for _, p := range dom.pipes {
		if err := d.pipeRules(dom, p, a); err != nil {
			errs = append(errs, fmt.Errorf("STATIC_PIPES=%q: %w", p.spec.String(), err))
		}
	}
	return errors.Join(errs...)
}

// closePipes detaches the pipes, removes their rules and socket files.
// The caller holds dom.mu.
func (d *daemon) closePipes(dom *domain) {
	fw := endpointPorts{dom}
	for _, p := range dom.pipes {
		if err := dom.p.RemovePort(p.owner.Port); err != nil && !errors.Is(err, l4.ErrNoSuchPort) {
			d.log.Warn().Err(err).Str("pipe", p.spec.String()).Msg("detaching a static pipe")
		}
		for _, k := range p.keys {
			dom.sw.Table.Remove(k, p.owner.Port)
			_ = fw.RemoveEndpointPort(k)
		}
		p.port.Close() // removes the socket file
	}
	dom.pipes = nil
}

func (d *daemon) domainOf(ifname string) *domain {
	for _, dom := range d.domains {
		if dom.ifname == ifname {
			return dom
		}
	}
	return nil
}

func keyStringers(ks []l4.Key) []fmt.Stringer {
	out := make([]fmt.Stringer, len(ks))
	for i := range ks {
		out[i] = ks[i]
	}
	return out
}

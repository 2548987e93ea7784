// The custom all-reduce's host side without a GPU: the setup handshake between rank threads
// (simulated here as concurrent connects on one thread, sharing one PeerExchange) decides the
// same path on every rank, and launches pack allreduce.cu's parameter block and pick its grid.

import assert from "node:assert/strict";
import { test } from "node:test";
import { KernelArgs, type Kernels } from "./kernels.js";
import type { DevicePtr, NativeCuda } from "./native.js";
import { PeerAllReduce, type PeerAllReduceHost, createPeerExchange, peerAllReduceMaxBytes } from "./peer_allreduce.js";

interface Launch {
  name: string;
  grid: number;
  block: number;
  params: DataView;
}

/** A rank's fake device: bump allocations at a per-rank base, peer access as told, launches recorded. */
function fakeHost(rank: number, canReach: (peer: number) => boolean): PeerAllReduceHost & { launches: Launch[]; enabled: number[]; released: DevicePtr[] } {
  let top = BigInt(rank + 1) << 40n;
  const launches: Launch[] = [];
  const enabled: number[] = [];
  const released: DevicePtr[] = [];
  const native = {
    memset: () => {},
    synchronize: () => {},
    canAccessPeer: (peer: number) => canReach(peer),
    enablePeerAccess: (peer: number) => void enabled.push(peer),
  } as unknown as NativeCuda;
  const kernels = {
    dry: false,
    launch(name: string, grid: [number], block: [number], fill: (a: KernelArgs) => KernelArgs) {
      const p = fill(new KernelArgs()).packed();
      launches.push({ name, grid: grid[0], block: block[0], params: new DataView(p.buffer.slice(p.byteOffset, p.byteOffset + p.byteLength)) });
    },
  } as unknown as Kernels;
  return {
    native,
    kernels,
    alloc: (bytes: number) => {
      const p = top;
      top += BigInt(Math.ceil(bytes / 256) * 256);
      return p;
    },
    release: (p: DevicePtr) => void released.push(p),
    launches,
    enabled,
    released,
  };
}

async function connectAll(ranks: number, canReach: (rank: number, peer: number) => boolean) {
  const exchange = createPeerExchange(ranks);
  const hosts = Array.from({ length: ranks }, (_, r) => fakeHost(r, (p) => canReach(r, p)));
  const ars = await Promise.all(hosts.map((h, r) => PeerAllReduce.connect(h, { rank: r, ranks, device: r, exchange }, 5000)));
  return { hosts, ars };
}

test("peer all-reduce: every rank ready → on everywhere, with every rank's buffers in the launches", async () => {
  const { hosts, ars } = await connectAll(4, () => true);
  const max = peerAllReduceMaxBytes(4);
  assert.equal(max, 2 ** 20);
  for (const [r, ar] of ars.entries()) {
    assert.equal(ar.off, "");
    assert.equal(ar.maxBytes, max);
    assert.deepEqual(hosts[r].enabled, [0, 1, 2, 3].filter((k) => k !== r));
  }
  assert.ok(ars[1].covers(1) && ars[1].covers(max) && !ars[1].covers(max + 1) && !ars[1].covers(0));
  // [5120] bf16 = 640 units of 16 bytes: 2 blocks of 512; the threshold: 32 blocks (the most).
  ars[2].run(0x1234n << 8n, 5120, "bf16");
  ars[2].run(0x99n << 8n, max / 4, "f32");
  const [small, large] = hosts[2].launches;
  assert.equal(small.name, "allreduce_bf16");
  assert.equal(small.grid, 2);
  assert.equal(small.block, 512);
  assert.equal(large.name, "allreduce_f32");
  assert.equal(large.grid, 32);
  assert.equal(ars[2].calls, 2);
  // Parameter block: data[8], signal[8], x, n, capacity, timeout (ns), rank, ranks — 168 bytes.
  const p = small.params;
  assert.equal(p.byteLength, 168);
  for (let k = 0; k < 8; k++) {
    const data = p.getBigUint64(8 * k, true);
    const signal = p.getBigUint64(64 + 8 * k, true);
    if (k < 4) {
      assert.equal(data >> 40n, BigInt(k + 1), `rank ${k}'s staging buffer`);
      assert.equal(signal >> 40n, BigInt(k + 1), `rank ${k}'s signals`);
      assert.notEqual(data, signal);
    } else assert.equal(data | signal, 0n);
  }
  assert.equal(p.getBigUint64(128, true), 0x1234n << 8n);
  assert.equal(p.getBigUint64(136, true), 5120n);
  assert.equal(p.getBigUint64(144, true), BigInt(max));
  assert.equal(p.getBigUint64(152, true), 30_000_000_000n);
  assert.equal(p.getInt32(160, true), 2);
  assert.equal(p.getInt32(164, true), 4);
  // The closing barrier: one block, no elements.
  ars[2].barrier();
  const b = hosts[2].launches[2];
  assert.equal(b.grid, 1);
  assert.equal(b.params.getBigUint64(136, true), 0n);
});

test("pushed all-reduce: which rows a producer may push, and the consumer's launch", async () => {
  const { hosts, ars } = await connectAll(4, () => true);
  const ar = ars[1];
  assert.ok(ar.canPush(5120, 8) && ar.canPush(5120, 4) && ar.canPush(64, 4));
  assert.ok(!ar.canPush(5120, 2), "a block pushes whole 4-row units");
  assert.ok(!ar.canPush(5124, 4), "the fused kernel's 8 elements a thread");
  assert.ok(!ar.canPush(5128, 8), "wider than the inbox's slots (and the consumer's 640 threads)");
  ar.runPushedAddRmsNorm(0xa0n << 8n, 0xb0n << 8n, 0xc0n << 8n, 5120, 1e-5);
  const [launch] = hosts[1].launches;
  assert.equal(launch.name, "allreduce_pushed_add_rms_norm_bf16");
  assert.equal(launch.grid, 1);
  assert.equal(launch.block, 640);
  assert.equal(ar.calls, 1);
  assert.equal(ar.pushedCalls, 1);
  // Parameter block: PushTarget {inbox[8], signal, rank, ranks}, then res, w, out, d, eps, timeout (ns) — 120 bytes.
  const p = launch.params;
  assert.equal(p.byteLength, 120);
  for (let k = 0; k < 8; k++) {
    const inbox = p.getBigUint64(8 * k, true);
    if (k < 4) assert.equal(inbox >> 40n, BigInt(k + 1), `rank ${k}'s inbox`);
    else assert.equal(inbox, 0n);
  }
  const signal = p.getBigUint64(64, true);
  assert.equal(signal >> 40n, 2n, "this rank's own signal buffer");
  assert.notEqual(signal, p.getBigUint64(8, true));
  assert.equal(p.getInt32(72, true), 1);
  assert.equal(p.getInt32(76, true), 4);
  assert.equal(p.getBigUint64(80, true), 0xa0n << 8n);
  assert.equal(p.getBigUint64(96, true), 0xc0n << 8n);
  assert.equal(p.getInt32(104, true), 5120);
  assert.equal(p.getBigUint64(112, true), 30_000_000_000n);
});

test("peer all-reduce: one rank without peer access → off on every rank, buffers released", async () => {
  const { hosts, ars } = await connectAll(4, (r, p) => !(r === 3 && p === 1));
  for (const [r, ar] of ars.entries()) {
    assert.equal(ar.maxBytes, 0);
    assert.ok(!ar.covers(16));
    assert.match(ar.off, r === 3 ? /no peer access from GPU 3 to GPU 1/ : /rank\(s\) 3 could not use peer memory/);
    assert.equal(hosts[r].released.length, 3); // staging, signals, inbox
    ar.barrier(); // off: nothing to wait for
    assert.equal(hosts[r].launches.length, 0);
  }
  assert.throws(() => ars[0].run(1n, 8, "bf16"), /off: rank\(s\) 3/);
});

test("peer all-reduce: the threshold (TSGLANG_CUSTOM_AR_MAX_BYTES, 0 = off) is the same decision on every rank", async () => {
  const saved = process.env.TSGLANG_CUSTOM_AR_MAX_BYTES;
  try {
    delete process.env.TSGLANG_CUSTOM_AR_MAX_BYTES;
    assert.equal(peerAllReduceMaxBytes(2), 2 ** 20);
    assert.equal(peerAllReduceMaxBytes(8), Math.floor((4 * 2 ** 20) / 7 / 256) * 256);
    process.env.TSGLANG_CUSTOM_AR_MAX_BYTES = "100000";
    assert.equal(peerAllReduceMaxBytes(4), 99840);
    process.env.TSGLANG_CUSTOM_AR_MAX_BYTES = "0";
    const { hosts, ars } = await connectAll(2, () => true);
    for (const [r, ar] of ars.entries()) {
      assert.equal(ar.off, "TSGLANG_CUSTOM_AR_MAX_BYTES=0");
      assert.deepEqual(hosts[r].enabled, []);
    }
    process.env.TSGLANG_CUSTOM_AR_MAX_BYTES = "lots";
    assert.throws(() => peerAllReduceMaxBytes(2), /byte count/);
  } finally {
    if (saved === undefined) delete process.env.TSGLANG_CUSTOM_AR_MAX_BYTES;
    else process.env.TSGLANG_CUSTOM_AR_MAX_BYTES = saved;
  }
});

test("peer all-reduce: a rank that never connects is named after the setup timeout", async () => {
  const exchange = createPeerExchange(3);
  const hosts = [0, 1].map((r) => fakeHost(r, () => true));
  await assert.rejects(Promise.all(hosts.map((h, r) => PeerAllReduce.connect(h, { rank: r, ranks: 3, device: r, exchange }, 50))), /rank\(s\) 2 did not post their buffers/);
});

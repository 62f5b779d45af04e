#!/usr/bin/env node
// BullMQ side of taskfleet's `make bench` (issue 7).
//
// Runs the scenarios of the shared benchmark contract against BullMQ on a
// redis-server of its own and prints ONE JSON object as the last stdout line;
// progress goes to stderr.
//
//   node bench.mjs [--redis-server PATH] [--tasks N] [--quick] [--out FILE]
//                  [--relay-fanout-events N] [--only throughput,latency,p0,relay,fanout]
//
// redis-server comes from --redis-server, else $REDIS_SERVER, else PATH
// (scripts/ensure-redis.sh prints one). Worker processes are this same file run
// as `node bench.mjs worker --port P --queue Q --concurrency C`, forked with an
// IPC channel; they report completions to the parent over that channel, so
// nothing polls Redis to find out when a run is over.
//
// Every timestamp is wall clock in ms with sub-ms resolution,
// `performance.timeOrigin + performance.now()`, comparable across processes.

import { fork, spawn, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { FlowProducer, Queue, QueueEvents, Worker } from 'bullmq';

const SELF = fileURLToPath(import.meta.url);
const HERE = path.dirname(SELF);
const now = () => performance.timeOrigin + performance.now();
const log = (...a) => process.stderr.write(`bullmq-bench: ${a.join(' ')}\n`);

// Contract priorities P0/P1/P2 -> BullMQ `priority`. In BullMQ a LOWER number
// is MORE urgent (1 is the highest; 0/absent means "no priority" and takes the
// plain FIFO wait list instead of the prioritized set).
const PRIO = { P0: 1, P1: 2, P2: 3 };
const ROUND_ROBIN = [PRIO.P0, PRIO.P1, PRIO.P2];

const CONCURRENCY = 8; // per worker process, as in the contract
const WIDE_CONCURRENCY = 64; // the wide rows: one worker process running 64 jobs at once
const IN_FLIGHT = 64; // queue.add calls in flight while producing
const FANOUT = 100; // webhook destinations of the relay fan-out

// Completed jobs are kept, but only the newest 1,000 per queue. BullMQ's
// default keeps every completed job forever, which nobody runs in production
// (Redis would grow without bound); `removeOnComplete: {count: N}` is the
// documented, commonly used setting. Keeping some (rather than `true`, which
// deletes each job at completion) keeps the per-job cost comparable to
// taskfleet, which also keeps its finished tasks. Trimming is part of the
// completion script, so it is paid inside the measured time.
const JOB_DEFAULTS = { removeOnComplete: { count: 1000 } };

// ---------------------------------------------------------------------------
// small helpers

function parseArgs(argv) {
    const out = { _: [] };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        if (!a.startsWith('--')) { out._.push(a); continue; }
        const eq = a.indexOf('=');
        if (eq > 0) { out[a.slice(2, eq)] = a.slice(eq + 1); continue; }
        const key = a.slice(2);
        const next = argv[i + 1];
        if (next === undefined || next.startsWith('--')) out[key] = true;
        else { out[key] = next; i++; }
    }
    return out;
}

function intArg(args, key, dflt) {
    if (args[key] === undefined) return dflt;
    const n = Number(args[key]);
    if (!Number.isInteger(n) || n <= 0) throw new Error(`--${key} needs a positive integer, got ${args[key]}`);
    return n;
}

// Same definition as taskfleet's examples/bench/scenarios.rs: index round((n-1)·p).
function percentile(sorted, p) {
    return sorted[Math.round((sorted.length - 1) * p)];
}

const round = (x, d) => Math.round(x * 10 ** d) / 10 ** d;

// ---------------------------------------------------------------------------
// worker process (`node bench.mjs worker …`)

async function workerMain(args) {
    const port = intArg(args, 'port', 0);
    const queueName = args.queue;
    const concurrency = intArg(args, 'concurrency', CONCURRENCY);
    const send = (m) => { if (process.connected) process.send(m); };

    // Job kinds, by job name:
    //   noop    throughput: `data.steps` × updateProgress, then complete
    //   stamp   idle latency: returns the clock at processor entry
    //   blocker P0-behind-P2: holds the slot 1 s; returns when it ended
    //   p0      P0-behind-P2: returns the clock at processor entry
    //   p2      P0-behind-P2 filler: nothing
    //   emit    relay: `data.events` × updateProgress, returns when it began
    const processor = async (job) => {
        const start = now();
        switch (job.name) {
            case 'noop':
                for (let i = 1; i <= (job.data.steps | 0); i++) await job.updateProgress(i);
                return null;
            case 'stamp':
            case 'p0':
                return start;
            case 'blocker':
                send({ type: 'blocker-started', at: start });
                await sleep(job.data.ms);
                return { start, end: now() }; // `end` = the slot is about to be freed
            case 'emit':
                for (let i = 0; i < job.data.events; i++) await job.updateProgress({ seq: i });
                return { first: start, last: now() };
            default:
                return null;
        }
    };

    const worker = new Worker(queueName, processor, {
        connection: { host: '127.0.0.1', port, maxRetriesPerRequest: null },
        concurrency,
        autorun: true,
    });

    // Throughput completions go to the parent in batches: one IPC message per
    // 100 completed jobs, or 5 ms after the first unreported one, carrying the
    // count and the clock of the latest completion (so batching does not blur
    // the end time). This costs Redis nothing, unlike polling job counts.
    let batchCount = 0;
    let batchLast = 0;
    let batchTimer = null;
    const flush = () => {
        if (batchTimer) { clearTimeout(batchTimer); batchTimer = null; }
        if (batchCount > 0) send({ type: 'batch', count: batchCount, last: batchLast });
        batchCount = 0;
    };
    // 'completed' fires after the job's completion script has run in Redis.
    worker.on('completed', (job, result) => {
        if (job.name === 'noop') {
            batchCount++;
            batchLast = now();
            if (batchCount >= 100) flush();
            else if (!batchTimer) batchTimer = setTimeout(flush, 5);
        } else {
            send({ type: 'done', name: job.name, id: job.id, result });
        }
    });
    worker.on('failed', (job, err) => {
        send({ type: 'failed', name: job?.name, id: job?.id, reason: String(err?.message ?? err) });
    });
    worker.on('error', (err) => log(`worker ${process.pid}: ${err?.message ?? err}`));

    let closing = false;
    const close = async () => {
        if (closing) return;
        closing = true;
        flush();
        try { await worker.close(); } catch { /* exiting anyway */ }
        process.exit(0);
    };
    process.on('message', (m) => { if (m?.type === 'close') close(); });
    process.on('disconnect', () => close()); // parent gone: do not linger
    process.on('SIGTERM', () => close());
    process.on('SIGINT', () => {}); // the parent decides; Ctrl-C reaches the whole group

    await worker.waitUntilReady();
    send({ type: 'ready', pid: process.pid });
}

// ---------------------------------------------------------------------------
// parent side: redis-server, worker processes, cleanup

const children = new Set(); // every child process we started
let redisProc = null;
let redisDir = null;

function freePort() {
    return new Promise((resolve, reject) => {
        const srv = net.createServer();
        srv.unref();
        srv.on('error', reject);
        srv.listen(0, '127.0.0.1', () => {
            const { port } = srv.address();
            srv.close(() => resolve(port));
        });
    });
}

// One PING over a raw socket; resolves true on "+PONG".
function ping(port) {
    return new Promise((resolve) => {
        const s = net.connect({ host: '127.0.0.1', port });
        let buf = '';
        const done = (ok) => { s.destroy(); resolve(ok); };
        s.setTimeout(500, () => done(false));
        s.on('error', () => done(false));
        s.on('connect', () => s.write('PING\r\n'));
        s.on('data', (d) => { buf += d; if (buf.includes('\r\n')) done(buf.startsWith('+PONG')); });
    });
}

async function startRedis(bin) {
    redisDir = fs.mkdtempSync(path.join(os.tmpdir(), 'taskfleet-bench-redis-'));
    for (let attempt = 1; attempt <= 3; attempt++) {
        const port = await freePort();
        // AOF with fsync once a second is the usual durable setup for a BullMQ
        // Redis (jobs survive a restart, losing at most ~1 s), and it is the
        // closest match to JetStream's file storage, which also syncs on an
        // interval rather than per write. RDB snapshots are off (--save "") and
        // so are automatic AOF rewrites (the throughput jobs of a full run
        // alone append ~60 MB, near the 64 MB default), so neither a background
        // save nor a rewrite can land in the middle of a measurement (a rewrite
        // would also start a new AOF file, and that run's writes could not be
        // counted).
        const argv = [
            '--port', String(port), '--bind', '127.0.0.1',
            '--dir', redisDir,
            '--appendonly', 'yes', '--appendfsync', 'everysec',
            '--auto-aof-rewrite-percentage', '0',
            '--save', '',
            '--daemonize', 'no', '--logfile', '',
        ];
        log(`starting ${bin} on 127.0.0.1:${port} (data in ${redisDir}, AOF everysec, no automatic rewrite) …`);
        const proc = spawn(bin, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        const keep = (d) => { out = (out + d).slice(-4000); };
        proc.stdout.on('data', keep);
        proc.stderr.on('data', keep);
        let exited = false;
        proc.on('exit', () => { exited = true; });
        proc.on('error', (e) => { exited = true; keep(String(e)); });
        redisProc = proc;

        log(`waiting for redis-server on port ${port} to answer PING …`);
        const deadline = Date.now() + 10_000;
        while (!exited && Date.now() < deadline) {
            if (await ping(port)) {
                log('redis-server is up');
                return port;
            }
            await sleep(50);
        }
        if (!exited) { proc.kill('SIGKILL'); throw new Error(`redis-server did not answer PING within 10 s:\n${out}`); }
        redisProc = null;
        log(`redis-server exited during startup (attempt ${attempt}):\n${out.trim()}`);
        if (!/Address already in use/i.test(out)) break;
    }
    throw new Error('could not start redis-server');
}

async function stopRedis() {
    const p = redisProc;
    redisProc = null;
    if (p && p.exitCode === null && p.signalCode === null) {
        p.kill('SIGTERM');
        const t = setTimeout(() => p.kill('SIGKILL'), 5000);
        await once(p, 'exit').catch(() => {});
        clearTimeout(t);
    }
    if (redisDir) { fs.rmSync(redisDir, { recursive: true, force: true }); redisDir = null; }
}

// Last-resort cleanup when the process exits without going through shutdown().
process.on('exit', () => {
    for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
    if (redisProc) { try { redisProc.kill('SIGKILL'); } catch { /* gone */ } }
    if (redisDir) { try { fs.rmSync(redisDir, { recursive: true, force: true }); } catch { /* best effort */ } }
});

// A forked worker process with a tiny message router.
class WorkerProc {
    constructor(port, queue, concurrency) {
        this.child = fork(SELF, ['worker', '--port', String(port), '--queue', queue, '--concurrency', String(concurrency)], {
            stdio: ['ignore', 2, 2, 'ipc'], // child stdout -> our stderr: stdout is for the JSON only
        });
        children.add(this.child);
        this.pid = this.child.pid;
        this.handlers = new Set();
        this.exited = new Promise((resolve) => this.child.on('exit', (code, sig) => {
            children.delete(this.child);
            resolve({ code, sig });
        }));
        this.child.on('message', (m) => { for (const h of this.handlers) h(m); });
    }

    on(handler) { this.handlers.add(handler); return () => this.handlers.delete(handler); }

    // Resolves with the first message matching pred; rejects if the process exits first.
    next(pred, timeoutMs = 60_000) {
        return new Promise((resolve, reject) => {
            const t = setTimeout(() => { off(); reject(new Error(`worker ${this.pid}: timed out waiting`)); }, timeoutMs);
            const off = this.on((m) => {
                if (m?.type === 'failed') { clearTimeout(t); off(); reject(new Error(`job ${m.name} ${m.id} failed: ${m.reason}`)); }
                else if (pred(m)) { clearTimeout(t); off(); resolve(m); }
            });
            this.exited.then(({ code, sig }) => { clearTimeout(t); off(); reject(new Error(`worker ${this.pid} exited (${code ?? sig})`)); });
        });
    }

    ready() { return this.next((m) => m.type === 'ready', 30_000); }

    async close() {
        if (this.child.exitCode !== null || this.child.signalCode !== null) return;
        if (this.child.connected) this.child.send({ type: 'close' });
        const t = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
        await this.exited;
        clearTimeout(t);
    }
}

// Start `n` worker processes and wait until every one is connected; then give
// them a moment to issue their blocking fetch, so all are idle and waiting.
async function startWorkers(n, port, queue, concurrency) {
    const ws = Array.from({ length: n }, () => new WorkerProc(port, queue, concurrency));
    await Promise.all(ws.map((w) => w.ready()));
    await sleep(300);
    return ws;
}

const connection = (port) => ({ host: '127.0.0.1', port, maxRetriesPerRequest: null });

async function dropQueue(queue) {
    await queue.obliterate({ force: true });
    await queue.close();
}

// ---------------------------------------------------------------------------
// scenarios

// Throughput end to end: workers (`procs` processes of `concurrency` slots)
// idle and ready, then `tasks` creates with 64 in flight; from the first
// queue.add until the last job has completed. Also counts what the run wrote
// to the AOF (see aofWrites).
async function throughput(port, tasks, procs, steps, concurrency) {
    const name = `tp-p${procs}-s${steps}-c${concurrency}`;
    const queue = new Queue(name, { connection: connection(port), defaultJobOptions: JOB_DEFAULTS });
    await queue.waitUntilReady();
    const redis = await queue.client;
    const workers = await startWorkers(procs, port, name, concurrency);
    log(`throughput: procs ${procs}, steps ${steps}: ${tasks} jobs, ${IN_FLIGHT} adds in flight, concurrency ${concurrency} …`);

    let completed = 0;
    let lastDone = 0;
    let finished = false;
    let resolveAll, rejectAll;
    const allDone = new Promise((res, rej) => { resolveAll = res; rejectAll = rej; });
    const offs = workers.map((w) => w.on((m) => {
        if (m.type === 'failed') rejectAll(new Error(`job ${m.id} failed: ${m.reason}`));
        if (m.type !== 'batch') return;
        completed += m.count;
        lastDone = Math.max(lastDone, m.last);
        if (completed >= tasks) resolveAll();
    }));
    for (const w of workers) {
        w.exited.then(() => { if (!finished) rejectAll(new Error(`worker ${w.pid} exited mid-run`)); });
    }

    const aofBefore = await aofMark(redis);
    const t0 = now();
    let next = 0;
    const lane = async () => {
        for (let i = next++; i < tasks; i = next++) {
            await queue.add('noop', { i, steps }, { priority: ROUND_ROBIN[i % 3] });
        }
    };
    await Promise.all(Array.from({ length: IN_FLIGHT }, lane));
    const added = now();
    await allDone;
    finished = true;
    const aof = aofWrites(aofBefore, await aofMark(redis));

    const secs = (lastDone - t0) / 1000;
    const writes = aof ? `${(aof.commands / tasks).toFixed(1)} Redis writes per job` : 'AOF not counted';
    log(`throughput: procs ${procs}, steps ${steps}, concurrency ${concurrency}: ${tasks} jobs in ${secs.toFixed(3)} s = ` +
        `${(tasks / secs).toFixed(0)}/s (adds took ${((added - t0) / 1000).toFixed(3)} s; ${writes})`);
    offs.forEach((off) => off());
    await Promise.all(workers.map((w) => w.close()));
    await dropQueue(queue);
    return {
        create: 'add', steps, procs, concurrency, tasks, secs: round(secs, 3), tasks_per_s: round(tasks / secs, 1),
        redis_writes_per_task: aof && round(aof.commands / tasks, 2),
        aof_bytes_per_task: aof && round(aof.bytes / tasks, 0),
    };
}

// --- what a run wrote: Redis's append-only file
//
// The AOF logs every write command Redis executed (a Lua script's effects one
// command each, wrapped in MULTI/EXEC), so the commands a throughput run added
// to it, per job, are BullMQ's counterpart of the JetStream messages stored per
// task on the other two sides.

// The AOF file Redis appends to now: Redis 7 keeps appendonlydir/<name>.<n>.incr.aof,
// the highest n being the current one (a rewrite starts a new one).
function aofIncrFile() {
    const dir = path.join(redisDir, 'appendonlydir');
    let best = null;
    let bestN = -1;
    for (const f of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
        const m = /\.(\d+)\.incr\.aof$/.exec(f);
        if (m && Number(m[1]) > bestN) { bestN = Number(m[1]); best = path.join(dir, f); }
    }
    return best;
}

// Where the AOF ends, once Redis has written out its AOF buffer (it writes it
// before serving the next requests; the fsync every second does not matter for
// reading it back); null when there is no AOF file.
async function aofMark(redis) {
    for (let i = 0; i < 300; i++) {
        const info = await redis.info('persistence');
        if (/^aof_buffer_length:0\s*$/m.test(info)) break;
        await sleep(10);
    }
    const file = aofIncrFile();
    return file && { file, size: fs.statSync(file).size };
}

// Write commands (MULTI, EXEC and SELECT not counted) and bytes appended to the
// AOF between two marks; null when a rewrite started a new file in between.
function aofWrites(from, to) {
    if (!from || !to || from.file !== to.file || to.size < from.size) return null;
    const buf = Buffer.alloc(to.size - from.size);
    const fd = fs.openSync(to.file, 'r');
    try { fs.readSync(fd, buf, 0, buf.length, from.size); } finally { fs.closeSync(fd); }
    return { commands: countCommands(buf), bytes: buf.length };
}

// Counts the commands in a run of RESP arrays (`*argc`, then `$len` + bytes per
// argument); a command cut off at the end is not counted.
function countCommands(buf) {
    const skip = new Set(['MULTI', 'EXEC', 'SELECT']);
    let pos = 0;
    let count = 0;
    const line = () => {
        const end = buf.indexOf('\r\n', pos);
        if (end < 0) return null;
        const text = buf.toString('latin1', pos, end);
        pos = end + 2;
        return text;
    };
    for (let head = line(); head !== null; head = line()) {
        if (head.startsWith('#')) continue; // an annotation (aof-timestamp-enabled)
        if (!head.startsWith('*')) break;
        let name = null;
        for (let i = Number(head.slice(1)); i > 0; i--) {
            const len = Number(line()?.slice(1));
            if (!Number.isInteger(len) || pos + len + 2 > buf.length) return count;
            name ??= buf.toString('latin1', pos, pos + len).toUpperCase();
            pos += len + 2;
        }
        if (!skip.has(name)) count++;
    }
    return count;
}

// Idle dispatch latency (one job at a time, worker idle and waiting) and, with
// the same worker afterwards idle for 2 s, its RSS.
async function latencyAndRss(port, samples) {
    const name = 'latency';
    const queue = new Queue(name, { connection: connection(port), defaultJobOptions: JOB_DEFAULTS });
    await queue.waitUntilReady();
    const [w] = await startWorkers(1, port, name, CONCURRENCY);
    const warmup = 20;
    log(`idle latency: ${warmup} warm-up + ${samples} samples, one job at a time, 1 worker process …`);
    const lat = [];
    for (let i = 0; i < warmup + samples; i++) {
        const done = w.next((m) => m.type === 'done' && m.name === 'stamp');
        const before = now();
        // P1 = taskfleet's default priority
        const job = await queue.add('stamp', { i }, { priority: PRIO.P1 });
        const m = await done;
        if (m.id !== job.id) throw new Error(`latency: expected job ${job.id}, got ${m.id}`);
        if (i >= warmup) lat.push(m.result - before);
        // Let the worker go back to its blocking wait, so every sample starts idle.
        await sleep(5);
    }
    lat.sort((a, b) => a - b);
    const idle = { p50: round(percentile(lat, 0.5), 3), p99: round(percentile(lat, 0.99), 3), samples };
    log(`idle latency: p50 ${idle.p50} ms, p99 ${idle.p99} ms`);

    log('idle RSS: worker idle for 2 s …');
    await sleep(2000);
    const status = fs.readFileSync(`/proc/${w.pid}/status`, 'utf8');
    const kb = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1]);
    if (!Number.isFinite(kb)) throw new Error('could not read VmRSS');
    const rss = round(kb / 1024, 1);
    log(`idle RSS: worker ${rss} MB (VmRSS ${kb} kB)`);
    await w.close();
    await dropQueue(queue);
    return { idle, rss };
}

// P0 behind 10,000 P2: one worker process with concurrency 1 runs a 1 s
// blocker; meanwhile `p2` P2 jobs and then one P0 are queued. Figure: P0
// processor start − blocker processor end (both stamped by the worker).
async function p0BehindP2(port, p2) {
    const name = 'p0-behind-p2';
    const queue = new Queue(name, { connection: connection(port), defaultJobOptions: JOB_DEFAULTS });
    await queue.waitUntilReady();
    const [w] = await startWorkers(1, port, name, 1);
    log(`P0 behind P2: blocker (1 s), then ${p2} P2 jobs (addBulk, 1000 per call) and one P0 …`);

    const blockerDone = w.next((m) => m.type === 'done' && m.name === 'blocker');
    const p0Done = w.next((m) => m.type === 'done' && m.name === 'p0');
    const started = w.next((m) => m.type === 'blocker-started');
    await queue.add('blocker', { ms: 1000 }, { priority: PRIO.P0 });
    await started;

    const t0 = now();
    const CHUNK = 1000;
    for (let i = 0; i < p2; i += CHUNK) {
        const n = Math.min(CHUNK, p2 - i);
        await queue.addBulk(Array.from({ length: n }, (_, k) => ({ name: 'p2', data: { i: i + k }, opts: { priority: PRIO.P2 } })));
    }
    await queue.add('p0', {}, { priority: PRIO.P0 });
    const queuedAt = now();

    const blocker = (await blockerDone).result;
    const p0Start = (await p0Done).result;
    log(`P0 behind P2: queueing took ${((queuedAt - t0) / 1000).toFixed(3)} s`);
    if (queuedAt > blocker.end) {
        // The P0 was not yet queued when the slot was freed: the figure would
        // measure our producer, not the queue. Say so loudly.
        log(`WARNING: the P0 was queued ${(queuedAt - blocker.end).toFixed(1)} ms AFTER the blocker ended; figure is not meaningful`);
    }
    const ms = p0Start - blocker.end;
    log(`P0 behind P2: P0 started ${ms.toFixed(3)} ms after the blocker ended`);

    // Clear the queue, not drain it: stop the worker, then obliterate.
    await w.close();
    await dropQueue(queue);
    return { p2_queued: p2, ms: round(ms, 3), p0_queued_in_time: queuedAt <= blocker.end };
}

// Relay. BullMQ has no webhook relay, so this models the common way to forward
// job events to a webhook: a QueueEvents listener (XREAD BLOCK on the queue's
// event stream) whose 'progress' handler POSTs each event's JSON to the
// receiver. QueueEvents emits synchronously and does not wait for async
// handlers, so events go into an in-memory FIFO drained by one loop that awaits
// each POST before sending the next: one in flight, in order, like taskfleet's
// one-destination relay. The HTTP client is node's http with a keep-alive
// agent (one socket). Nothing is persisted per delivery (no retry record),
// which taskfleet's relay does; an event arriving while the forwarder is down
// is lost unless it re-reads the stream. The forwarder and the receiver both
// live in this (parent) process; the job that produces the events runs in a
// forked worker process, calling job.updateProgress `events` times.
async function relay(port, events) {
    const name = 'relay';
    const queue = new Queue(name, { connection: connection(port), defaultJobOptions: JOB_DEFAULTS });
    await queue.waitUntilReady();

    // receiver: counts POSTs, checks their order, answers 200
    let received = 0;
    let lastAt = 0;
    let outOfOrder = 0;
    let resolveAll;
    const allReceived = new Promise((r) => { resolveAll = r; });
    const server = http.createServer((req, res) => {
        const chunks = [];
        req.on('data', (c) => chunks.push(c));
        req.on('end', () => {
            const ev = JSON.parse(Buffer.concat(chunks).toString('utf8'));
            if (ev.data?.seq !== received) outOfOrder++;
            received++;
            lastAt = now();
            res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
            if (received === events) resolveAll();
        });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const target = server.address().port;

    // forwarder
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const post = (body) => new Promise((resolve, reject) => {
        const req = http.request({
            host: '127.0.0.1', port: target, path: '/hook', method: 'POST', agent,
            headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
        }, (res) => {
            res.resume();
            res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`receiver said ${res.statusCode}`))));
        });
        req.on('error', reject);
        req.end(body);
    });
    const fifo = [];
    let draining = false;
    let forwardError = null;
    const drain = async () => {
        if (draining) return;
        draining = true;
        try {
            while (fifo.length) await post(fifo.shift());
        } catch (e) {
            forwardError = e;
            resolveAll();
        } finally {
            draining = false;
        }
    };
    // Read the stream from its start ('0-0'), so no event can slip past
    // before the first XREAD is issued; the queue is fresh, so nothing older is there.
    const qe = new QueueEvents(name, { connection: connection(port), lastEventId: '0-0' });
    qe.on('progress', ({ jobId, data }, id) => {
        fifo.push(JSON.stringify({ event: 'progress', queue: name, jobId, data, id }));
        drain();
    });
    await qe.waitUntilReady();

    const [w] = await startWorkers(1, port, name, 1);
    log(`relay: ${events} progress events from one job -> QueueEvents -> POST, one at a time …`);
    const jobDone = w.next((m) => m.type === 'done' && m.name === 'emit', 120_000);
    await queue.add('emit', { events }, { priority: PRIO.P1 });
    const { result } = await jobDone;
    await allReceived;
    if (forwardError) throw forwardError;
    if (outOfOrder) throw new Error(`relay: ${outOfOrder} deliveries out of order`);
    const secs = (lastAt - result.first) / 1000;
    const perS = events / secs;
    // If the POSTs keep up with production, the figure is the producer's rate.
    log(`relay: ${events} deliveries in ${secs.toFixed(3)} s = ${perS.toFixed(0)}/s ` +
        `(the job took ${((result.last - result.first) / 1000).toFixed(3)} s to emit them)`);

    await qe.close();
    agent.destroy();
    server.close();
    await w.close();
    await dropQueue(queue);
    return round(perS, 1);
}

// Relay fan-out: the relay model above, extended to FANOUT destinations the way
// a BullMQ user would make each destination durable and in order: one queue per
// destination (`relay-d<n>`), drained by a Worker of concurrency 1 (FIFO, one
// POST in flight, its own keep-alive socket). A QueueEvents listener on the
// source queue's 'progress' events fans each event out with one
// FlowProducer.addBulk (one MULTI/EXEC adding a job to each of the FANOUT
// queues); the addBulk calls are chained, so events are added in the order they
// came. Each delivery is thus a stored job (completed ones kept, the newest
// 1,000 per queue); no retries are configured. The listener, the FANOUT
// workers and the receiver live in this (parent) process; the job emitting the
// events runs in a forked worker process, as above. Figure: deliveries ÷ (the
// job's first progress call → the receiver counting the last delivery).
async function relayFanout(port, events) {
    const name = 'relay-fanout';
    const queue = new Queue(name, { connection: connection(port), defaultJobOptions: JOB_DEFAULTS });
    await queue.waitUntilReady();
    const expected = events * FANOUT;

    // receiver: /hook/<n>; counts POSTs, checks the order per destination, answers 200
    const highest = new Array(FANOUT).fill(-1);
    let received = 0;
    let lastAt = 0;
    let outOfOrder = 0;
    let unreadable = 0;
    let failure = null;
    let resolveAll;
    const allReceived = new Promise((r) => { resolveAll = r; });
    const server = http.createServer((req, res) => {
        const chunks = [];
        req.on('data', (c) => chunks.push(c));
        req.on('end', () => {
            const n = Number(/^\/hook\/(\d+)$/.exec(req.url)?.[1]);
            let seq;
            try { seq = JSON.parse(Buffer.concat(chunks).toString('utf8')).data?.seq; } catch { /* counted below */ }
            if (!Number.isInteger(seq) || !(n >= 0 && n < FANOUT)) unreadable++;
            else {
                if (seq <= highest[n]) outOfOrder++;
                highest[n] = Math.max(highest[n], seq);
                received++;
                lastAt = now();
            }
            res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
            if (received === expected) resolveAll();
        });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const target = server.address().port;

    // one queue and one worker (concurrency 1) per destination
    const agents = [];
    const destinations = [];
    for (let n = 0; n < FANOUT; n++) {
        const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
        agents.push(agent);
        const post = (body) => new Promise((resolve, reject) => {
            const req = http.request({
                host: '127.0.0.1', port: target, path: `/hook/${n}`, method: 'POST', agent,
                headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
            }, (res) => {
                res.resume();
                res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`receiver said ${res.statusCode}`))));
            });
            req.on('error', reject);
            req.end(body);
        });
        const worker = new Worker(`relay-d${n}`, (job) => post(job.data.body), { connection: connection(port), concurrency: 1 });
        worker.on('failed', (job, err) => { failure ??= new Error(`delivery ${job?.id} to d${n} failed: ${err?.message ?? err}`); resolveAll(); });
        worker.on('error', (err) => log(`relay-d${n} worker: ${err?.message ?? err}`));
        destinations.push(worker);
    }
    await Promise.all(destinations.map((w) => w.waitUntilReady()));

    // fan-out: one addBulk per progress event, chained in arrival order
    const flow = new FlowProducer({ connection: connection(port) });
    let chain = Promise.resolve();
    const qe = new QueueEvents(name, { connection: connection(port), lastEventId: '0-0' });
    qe.on('progress', ({ jobId, data }, id) => {
        const body = JSON.stringify({ event: 'progress', queue: name, jobId, data, id });
        const jobs = highest.map((_, n) => ({ name: 'deliver', queueName: `relay-d${n}`, data: { body }, opts: JOB_DEFAULTS }));
        chain = chain.then(() => flow.addBulk(jobs)).catch((e) => { failure ??= e; resolveAll(); });
    });
    await qe.waitUntilReady();

    const [w] = await startWorkers(1, port, name, 1);
    log(`relay fan-out: ${events} progress events × ${FANOUT} destinations (a queue and a worker of concurrency 1 each) …`);
    const jobDone = w.next((m) => m.type === 'done' && m.name === 'emit', 120_000);
    await queue.add('emit', { events }, { priority: PRIO.P1 });
    const { result } = await jobDone;
    const timeout = setTimeout(() => { failure ??= new Error(`only ${received} of ${expected} deliveries within 120 s`); resolveAll(); }, 120_000);
    await allReceived;
    clearTimeout(timeout);
    if (failure) throw failure;
    if (outOfOrder || unreadable) throw new Error(`relay fan-out: ${outOfOrder} deliveries out of order, ${unreadable} unreadable`);
    const secs = (lastAt - result.first) / 1000;
    const perS = expected / secs;
    log(`relay fan-out: ${expected} deliveries in ${secs.toFixed(3)} s = ${perS.toFixed(0)}/s, in order per destination`);

    await qe.close();
    await flow.close();
    await Promise.all(destinations.map((d) => d.close()));
    for (const a of agents) a.destroy();
    server.close();
    await w.close();
    for (let n = 0; n < FANOUT; n++) {
        const q = new Queue(`relay-d${n}`, { connection: connection(port) });
        await dropQueue(q);
    }
    await dropQueue(queue);
    return round(perS, 1);
}

// ---------------------------------------------------------------------------

function versions(redisBin) {
    const pkg = JSON.parse(fs.readFileSync(path.join(HERE, 'node_modules', 'bullmq', 'package.json'), 'utf8'));
    const out = execFileSync(redisBin, ['--version'], { encoding: 'utf8' });
    const redis = /v=(\d+\.\d+\.\d+)/.exec(out)?.[1] ?? out.trim();
    return { bullmq: pkg.version, redis, node: process.version };
}

function findRedis(args) {
    const fromFlag = typeof args['redis-server'] === 'string' ? args['redis-server'] : null;
    const bin = fromFlag ?? process.env.REDIS_SERVER ?? null;
    if (bin) {
        try { fs.accessSync(bin, fs.constants.X_OK); } catch {
            throw new Error(`redis-server ${bin} (from ${fromFlag ? '--redis-server' : '$REDIS_SERVER'}) is not an executable file`);
        }
        return bin;
    }
    for (const dir of (process.env.PATH ?? '').split(':')) {
        const cand = path.join(dir || '.', 'redis-server');
        try { fs.accessSync(cand, fs.constants.X_OK); log(`no --redis-server/$REDIS_SERVER; using ${cand} from PATH`); return cand; } catch { /* next */ }
    }
    throw new Error('no redis-server: pass --redis-server PATH or set $REDIS_SERVER (scripts/ensure-redis.sh prints one)');
}

async function main(args) {
    const quick = args.quick === true;
    const tasks = intArg(args, 'tasks', quick ? 500 : 5000);
    const samples = intArg(args, 'samples', quick ? 50 : 300);
    const p2 = intArg(args, 'p2', quick ? 1000 : 10_000);
    // The same sizes as taskfleet's and raw JetStream's relay scenarios.
    const relayEvents = intArg(args, 'relay-events', quick ? 300 : 20000);
    const fanoutEvents = intArg(args, 'relay-fanout-events', quick ? 20 : 1000);
    const outFile = typeof args.out === 'string' ? args.out : null;

    const redisBin = findRedis(args);
    const startedAt = now();
    const port = await startRedis(redisBin);

    const result = {
        system: 'bullmq',
        versions: versions(redisBin),
        tasks,
        concurrency: CONCURRENCY,
        throughput: [],
    };
    // --only a,b (throughput, latency, p0, relay, fanout) runs a subset, for poking at
    // one scenario; the JSON then lacks the others. Not for `make bench`.
    const only = typeof args.only === 'string' ? new Set(args.only.split(',')) : null;
    const want = (s) => !only || only.has(s);
    if (want('throughput')) {
        // [worker processes, steps, concurrency per process]
        const runs = [[1, 0, CONCURRENCY], [1, 3, CONCURRENCY], [2, 0, CONCURRENCY], [4, 0, CONCURRENCY],
            [1, 0, WIDE_CONCURRENCY], [1, 3, WIDE_CONCURRENCY]];
        for (const [procs, steps, concurrency] of runs) {
            result.throughput.push(await throughput(port, tasks, procs, steps, concurrency));
        }
    }
    if (want('latency')) {
        const { idle, rss } = await latencyAndRss(port, samples);
        result.idle_latency_ms = idle;
        result.rss_mb = { worker: rss, api: null };
    }
    if (want('p0')) result.p0_behind_p2_ms = await p0BehindP2(port, p2);
    if (want('relay')) {
        result.relay_per_s = await relay(port, relayEvents);
        result.relay_note = 'BullMQ has no relay; modelled as a QueueEvents listener on "progress" POSTing each event ' +
            'to one local HTTP receiver, one POST in flight, in order (node http, keep-alive); no delivery record is persisted';
    }
    if (want('fanout')) {
        result.relay_fanout_per_s = await relayFanout(port, fanoutEvents);
        result.extra = { relay_fanout: { events: fanoutEvents, destinations: FANOUT, deliveries: fanoutEvents * FANOUT } };
        result.relay_fanout_note = `BullMQ has no relay; ${fanoutEvents} progress events × ${FANOUT} destinations modelled as ` +
            `a QueueEvents listener on "progress" adding one job per destination to ${FANOUT} queues (one FlowProducer.addBulk ` +
            'per event, chained in event order), each queue drained in order by a Worker of concurrency 1 POSTing to its ' +
            'destination (node http, keep-alive, one socket each); every delivery is a stored job (no retries configured); ' +
            `listener, ${FANOUT} workers and receiver in one node process`;
    }
    // keys in the contract's order
    const ordered = {};
    for (const k of ['system', 'versions', 'tasks', 'concurrency', 'throughput', 'idle_latency_ms',
        'p0_behind_p2_ms', 'relay_per_s', 'relay_note', 'relay_fanout_per_s', 'relay_fanout_note', 'rss_mb', 'extra']) {
        if (k in result) ordered[k] = result[k];
    }

    await stopRedis();
    log(`done in ${((now() - startedAt) / 1000).toFixed(1)} s`);
    const line = JSON.stringify(ordered);
    if (outFile) fs.writeFileSync(outFile, line + '\n');
    process.stdout.write(line + '\n');
}

// ---------------------------------------------------------------------------

const args = parseArgs(process.argv.slice(2));
if (args._[0] === 'worker') {
    workerMain(args).catch((e) => { log(`worker: ${e?.stack ?? e}`); process.exit(1); });
} else {
    let stopping = false;
    const shutdown = async (code) => {
        if (stopping) return;
        stopping = true;
        await Promise.allSettled([...children].map((c) => { c.kill('SIGKILL'); return once(c, 'exit'); }));
        await stopRedis().catch(() => {});
        process.exit(code);
    };
    process.on('SIGINT', () => { log('interrupted; cleaning up'); shutdown(130); });
    process.on('SIGTERM', () => { log('terminated; cleaning up'); shutdown(143); });
    main(args).catch((e) => {
        if (stopping) return; // interrupted: the failure is only the fallout
        log(`error: ${e?.stack ?? e}`);
        shutdown(1);
    });
}

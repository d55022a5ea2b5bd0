using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lrl.Cpu;

/// <summary>
/// Matrix products y = x·Wᵀ + b for up to three weights sharing one input (Q/K/V), or a gate/up pair fused with SwiGLU,
/// in a single parallel dispatch split over blocks of output features.
/// One row (decode): each block is a GEMV reading its weight rows once, in the stored format.
/// Several rows (prefill): each tile of 4 weight rows is converted to f32 once into per-thread scratch and reused for
/// every input row by a register-blocked 4×2 micro-kernel, over K in cache-sized chunks.
/// </summary>
internal sealed unsafe class MatMulJob : IParallelJob
{
    private const int Tile = 4;       // weight rows per micro-kernel tile
    // With adapter updates staged, items start at multiples of this many output rows: whole groups of an int8
    // adapter's B (the fused epilogue computes a range's partial groups whole); plain products keep
    // whole tiles.
    private const int LoraItemAlign = CpuLora.ItemAlign;
    private const int KChunk = 1024;
    private const int PanelRows = 32;  // prefill (transposed path): weight rows converted to f32 together
    private const int PanelK = 128;    // K per chunk: 64 tokens × 128 columns of the transposed input = 32 KB (L1)
    private const int TokenBlock = 64; // tokens per micro-kernel call (four 512-bit vectors)
    private const int MinTransposedRows = 40; // below, the dot-product tiles are faster than padding to 64 tokens
    // Decode: guided items. Each item takes 1/threads of the rows still unassigned (with two threads: 1/2, 1/4, 1/8, ...
    // of the matrix), down to DecodeMinRows: the first items are long sequential streams (the prefetchers ramp up once
    // per item) and the last ones short, so a thread that falls behind (a busy neighbour on this VM) leaves the other
    // little to wait for. Paired decode runs alternating this and two equal blocks per thread (the scheme before),
    // SmolLM2-135M bf16 / int8 / int4 +3.5 / +3.5 / +3.1 %, Llama-3.2-1B bf16 / int4 +0.6 / +2.3 % (standard errors
    // 1-2 %); a floor of 16 rows gave 0.0 %, of 64 rows +1.9 %.
    private const int DecodeMinRows = 32;


    private struct Target
    {
        public CpuMatrix W;
        public float[] Y;
        public float[]? Bias;
        public int Block, Blocks, FirstItem;
        public int[]? Starts; // decode: item i covers rows [Starts[i], Starts[i + 1])
    }

    private readonly int[][] _starts = [[], [], []];
    private readonly RowScratch[] _rowScratch = [new(), new(), new()]; // the prepared rows of each target

    private readonly Target[] _t = new Target[3];
    private readonly float[][] _scratch;
    private readonly float[][] _act;    // per thread: sigmoid of a block of gate outputs (SwiGLU epilogue)
    private readonly float[][] _outT;   // per thread: the item's outputs transposed, [block rows][padded tokens]
    private float[] _xT = [];           // prefill: x transposed in blocks of 64 tokens, each [inF][64]; shared by all items
    private int _count, _rows, _rowsPadded;
    private float[] _x = [];
    private bool _swiGlu;
    private bool _quantRows; // a few rows: the decode kernel per row over L1 blocks of weights (CpuMatrix.GemvRows)
    private readonly float[]?[] _outputs = new float[3][];
    private int _loraItems; // the dispatch's first items: adapter down-projections (LoraStage)

    /// <summary>Adapter updates staged for the next products (applied in their items' epilogue).</summary>
    public LoraStage Stage { get; } = new();

    public MatMulJob(int threads)
    {
        _scratch = new float[threads][];
        _outT = new float[threads][];
        _act = new float[threads][];
        for (int i = 0; i < threads; i++) { _scratch[i] = []; _outT[i] = []; _act[i] = []; }
    }

    public void Run(WorkerPool pool, float[] x, CpuMatrix w, float[] y, int rows, float[]? bias)
    {
        Begin(x, rows, false, w);
        Add(pool, w, y, bias);
        Dispatch(pool);
    }

    public void Run3(WorkerPool pool, float[] x, int rows, CpuMatrix w0, float[] y0, float[]? b0,
                     CpuMatrix w1, float[] y1, float[]? b1, CpuMatrix w2, float[] y2, float[]? b2)
    {
        Begin(x, rows, false, w0, w1, w2);
        Add(pool, w0, y0, b0); Add(pool, w1, y1, b1); Add(pool, w2, y2, b2);
        Dispatch(pool);
    }

    /// <summary>gateOut = silu(x·Gᵀ) ⊙ (x·Uᵀ); upOut is scratch. Each item computes the same block of both products.</summary>
    public void RunSwiGlu(WorkerPool pool, float[] x, int rows, CpuMatrix gate, float[] gateOut, CpuMatrix up, float[] upOut)
    {
        if (gate.Rows != up.Rows || gate.Cols != up.Cols)
            throw new ArgumentException($"gate {gate} and up {up} must have the same shape");
        Begin(x, rows, true, gate, up);
        Add(pool, gate, gateOut, null);
        _t[1] = _t[0] with { W = up, Y = upOut };
        _count = 1; // items cover the gate's blocks; each also does the matching up block
        Dispatch(pool);
    }

    private void Begin(float[] x, int rows, bool swiGlu, CpuMatrix w0, CpuMatrix? w1 = null, CpuMatrix? w2 = null)
    {
        _x = x; _rows = rows; _count = 0; _swiGlu = swiGlu;
        _quantRows = rows > 1 && rows <= RowsLimit(w0) && (w1 is null || rows <= RowsLimit(w1)) && (w2 is null || rows <= RowsLimit(w2));
    }

    /// <summary>Products of up to this many rows run each row's GEMV arithmetic where a matrix can (<see cref="IBackend.ExactRows"/>).</summary>
    public int ExactRows;

    /// <summary>Most rows <paramref name="w"/> runs through <see cref="CpuMatrix.GemvRows"/>: its own choice, raised to <see cref="ExactRows"/>.</summary>
    private int RowsLimit(CpuMatrix w) => w.RowsMax > 0 ? Math.Max(w.RowsMax, ExactRows) : 0;

    private void Add(WorkerPool pool, CpuMatrix w, float[] y, float[]? bias)
    {
        if ((long)_rows * w.Cols > _x.Length || (long)_rows * w.Rows > y.Length)
            throw new ArgumentException($"MatMul {w.Name}: buffers too small for {_rows} rows of [{w.Rows}, {w.Cols}]");
        int first = _count == 0 ? 0 : _t[_count - 1].FirstItem + _t[_count - 1].Blocks;
        if (_rows == 1 || _quantRows)
        {
            int threads = pool.ThreadCount, align = Stage.Count > 0 ? LoraItemAlign : Tile, items = GuidedItems(w.Rows, threads, null, align);
            if (_starts[_count].Length < items + 1) _starts[_count] = new int[items + 1]; // once per shape, not per token
            GuidedItems(w.Rows, threads, _starts[_count], align);
            _t[_count] = new Target { W = w, Y = y, Bias = bias, Blocks = items, FirstItem = first, Starts = _starts[_count] };
            _count++;
            return;
        }
        int target = pool.ThreadCount * 4;
        int block = Math.Max(Tile, (w.Rows + target - 1) / target);
        int blockAlign = Stage.Count > 0 ? LoraItemAlign : Tile;
        block = (block + blockAlign - 1) / blockAlign * blockAlign;
        _t[_count++] = new Target { W = w, Y = y, Bias = bias, Block = block, Blocks = (w.Rows + block - 1) / block, FirstItem = first };
    }

    /// <summary>
    /// Decode items over <paramref name="rows"/> rows: each 1/threads of the rows left (rounded up to a multiple of
    /// <paramref name="align"/>: whole tiles, or whole adapter panels), at least <see cref="DecodeMinRows"/>; fills <paramref name="starts"/> (items + 1 boundaries) when given. Returns the count.
    /// </summary>
    internal static int GuidedItems(int rows, int threads, int[]? starts, int align = Tile)
    {
        int n = 0, at = 0;
        while (at < rows)
        {
            int size = Math.Max(DecodeMinRows, (rows - at + threads - 1) / threads);
            size = (size + align - 1) / align * align;
            if (starts != null) starts[n] = at;
            n++;
            at = Math.Min(rows, at + size);
        }
        if (starts != null) starts[n] = rows;
        return n;
    }

    private void Dispatch(WorkerPool pool)
    {
        ref var last = ref _t[_count - 1];
        // Decode: let each matrix prepare the shared input once (quantized matrices quantize x to int8 here).
        int prepared = _rows == 1 ? (_swiGlu ? 2 : _count) : 0;
        for (int i = 0; i < prepared; i++)
            if (i == 0 || !_t[i].W.TryShareGemv(_t[0].W)) _t[i].W.PrepareGemv(_x.AsSpan(0, _t[i].W.Cols));
        if (_quantRows)
            for (int i = 0; i < (_swiGlu ? 2 : _count); i++)
                if (i == 0 || !_t[i].W.TryShareRows(_t[0].W)) _t[i].W.PrepareRows(_x, _rows, _rowScratch[i], pool);
        _rowsPadded = 0;
        if (Wide && _rows >= MinTransposedRows && !_quantRows)
        {
            // Prefill: x transposed once per dispatch (Q/K/V and gate/up share it). Tokens are padded to whole blocks
            // of 64, except that a last block of up to 24 is padded to 16s only (the 4x16 kernel, broadcast-bound,
            // beats computing 40 zero tokens). Llama-3.2-1B bf16: pp48 51 tok/s with the dot-product kernel, 43 with
            // 16-wide blocks; pp63 53 vs 77 in one 64-wide block.
            int inF = _t[0].W.Cols;
            int full = _rows / TokenBlock * TokenBlock, rem = _rows - full;
            _rowsPadded = full + (rem == 0 ? 0 : rem > 24 ? TokenBlock : (rem + 15) / 16 * 16);
            long need = (long)inF * _rowsPadded;
            if (_xT.Length < need) _xT = new float[need];
            TransposeInput(inF);
        }
        bool lora = Stage.Count > 0;
        _loraItems = 0;
        if (lora)
        {
            int outputs = _swiGlu ? 2 : _count;
            for (int i = 0; i < 3; i++) _outputs[i] = i < outputs ? _t[i].Y : null;
            _loraItems = Stage.Begin(_outputs);
        }
        try { pool.Run(this, _loraItems + last.FirstItem + last.Blocks); }
        finally
        {
            for (int i = 0; i < prepared; i++) _t[i].W.EndGemv();
            if (lora) { Stage.End(); Array.Clear(_outputs); }
        }
        _x = [];
        for (int i = 0; i < _t.Length; i++) _t[i] = default;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int item, int worker)
    {
        if (item < _loraItems) { Stage.ExecuteDown(item); return; } // adapter down-projections come first
        item -= _loraItems;
        if (Stage.Active) Stage.PrefetchNext(item, _t[_count - 1].FirstItem + _t[_count - 1].Blocks);
        int k = 0;
        while (k + 1 < _count && item >= _t[k + 1].FirstItem) k++;
        ref var t = ref _t[k];
        int start, end;
        if (t.Starts is { } st) { start = st[item - t.FirstItem]; end = st[item - t.FirstItem + 1]; }
        else { start = (item - t.FirstItem) * t.Block; end = Math.Min(t.W.Rows, start + t.Block); }
        Compute(ref t, start, end, worker);
        if (!_swiGlu) return;
        ref var u = ref _t[1];
        Compute(ref u, start, end, worker);
        int outF = t.W.Rows;
        // silu(g)·up = g·sigmoid(g)·up, vectorized (a batched step runs it for every row: scalar exp was a quarter of
        // a 16-row step of SmolLM2-135M).
        var sig = _act[worker];
        if (sig.Length < end - start) _act[worker] = sig = new float[Math.Max(end - start, 2 * sig.Length)];
        var sg = sig.AsSpan(0, end - start);
        for (int r = 0; r < _rows; r++)
        {
            var g = t.Y.AsSpan(r * outF + start, end - start);
            var up = u.Y.AsSpan(r * outF + start, end - start);
            TensorPrimitives.Sigmoid(g, sg);
            TensorPrimitives.Multiply(g, sg, g);
            TensorPrimitives.Multiply(g, up, g);
        }
    }

    private void Compute(ref Target t, int start, int end, int worker)
    {
        var w = t.W;
        int inF = w.Cols, outF = w.Rows;
        if (_rows == 1)
        {
            var y = t.Y.AsSpan(start, end - start);
            if (Stage.Active) Stage.PrefetchUp(t.Y, start, end); // the epilogue's B bytes, in L2 when the product is done
            w.Gemv(_x.AsSpan(0, inF), y, start, end);
            if (t.Bias != null) TensorPrimitives.Add(y, t.Bias.AsSpan(start, end - start), y);
            if (Stage.Active) Stage.Epilogue(t.Y, outF, start, end);
            return;
        }

        if (_quantRows) w.GemvRows(_x, t.Y, _rows, start, end);
        else if (_rowsPadded > 0) ComputeTransposed(ref t, start, end, worker);
        else ComputeTiles(ref t, start, end, worker);
        if (t.Bias != null)
            for (int r = 0; r < _rows; r++)
            {
                var y = t.Y.AsSpan(r * outF + start, end - start);
                TensorPrimitives.Add(y, t.Bias.AsSpan(start, end - start), y);
            }
        if (Stage.Active) Stage.Epilogue(t.Y, outF, start, end);
    }

    /// <summary>
    /// x [rows][inF] → blocks of 64 tokens, each [inF][64] (the last block as wide as its tokens padded to 16), so a
    /// micro-kernel's K chunk of the input is one contiguous run: with a row stride of all the tokens, a chunk's rows
    /// fell on a few L1 sets and evicted each other.
    /// </summary>
    private void TransposeInput(int inF)
    {
        fixed (float* xp = _x, xt = _xT)
        {
            for (int b0 = 0; b0 < _rowsPadded; b0 += TokenBlock)
            {
                int width = Math.Min(TokenBlock, _rowsPadded - b0);
                float* panel = xt + (long)b0 * inF;
                // 16 columns at a time, so reads and writes both touch whole cache lines.
                for (int k0 = 0; k0 < inF; k0 += 16)
                {
                    int kn = Math.Min(16, inF - k0);
                    for (int r = 0; r < width; r++)
                    {
                        float* dst = panel + (long)k0 * width + r;
                        if (b0 + r < _rows)
                        {
                            float* src = xp + (long)(b0 + r) * inF + k0;
                            for (int k = 0; k < kn; k++) dst[(long)k * width] = src[k];
                        }
                        else for (int k = 0; k < kn; k++) dst[(long)k * width] = 0;
                    }
                }
            }
        }
    }

    /// <summary>
    /// Prefill on 512-bit FMA: a panel of weight rows is converted to f32 once; then, per chunk of K, each block of 64
    /// tokens (the transposed input's chunk, 32 KB, stays in L1) runs against every 4-row tile of the panel with a 4×64
    /// outer-product micro-kernel: one weight broadcast feeds four FMAs over 64 tokens, sixteen accumulators live across
    /// the chunk, and no horizontal sums are needed. Outputs collect transposed per thread and are written back at the end.
    /// </summary>
    private void ComputeTransposed(ref Target t, int start, int end, int worker)
    {
        var w = t.W;
        int inF = w.Cols, outF = w.Rows, ld = _rowsPadded, block = end - start;
        var scratch = _scratch[worker];
        if (scratch.Length < PanelRows * inF) _scratch[worker] = scratch = new float[PanelRows * inF];
        int blockPadded = (block + Tile - 1) / Tile * Tile;
        var outT = _outT[worker];
        if (outT.Length < (long)blockPadded * ld) _outT[worker] = outT = new float[(long)blockPadded * ld];
        fixed (float* s = scratch, xt = _xT, ot = outT, yp = t.Y)
        {
            for (int p0 = start; p0 < end; p0 += PanelRows)
            {
                int panel = Math.Min(PanelRows, end - p0), tiles = (panel + Tile - 1) / Tile;
                for (int j = 0; j < tiles * Tile; j++)
                {
                    var dst = scratch.AsSpan(j * inF, inF);
                    if (j < panel) w.RowToFloat(p0 + j, dst); else dst.Clear();
                }
                for (int kc = 0; kc < inF; kc += PanelK)
                {
                    int klen = Math.Min(PanelK, inF - kc);
                    bool first = kc == 0;
                    for (int r0 = 0; r0 < ld; r0 += TokenBlock)
                    {
                        int width = Math.Min(TokenBlock, ld - r0);
                        float* x = xt + (long)r0 * inF + (long)kc * width;
                        for (int ti = 0; ti < tiles; ti++)
                        {
                            float* wt = s + (long)ti * Tile * inF + kc;
                            float* o = ot + (long)(p0 - start + ti * Tile) * ld + r0;
                            if (width == TokenBlock) Outer4x64(wt, inF, x, TokenBlock, klen, o, ld, first);
                            else for (int r = 0; r < width; r += 16) Outer4x16(wt, inF, x + r, width, klen, o + r, ld, first);
                        }
                    }
                }
            }
            // Write back [block][tokens] → y [tokens][outF]: one 8-lane gather down the block per token and group of
            // eight outputs (scalar copies cost 8 % of prefill time).
            var lanes = Vector256.CreateSequence(0, ld);
            int o0 = 0;
            for (; o0 + 8 <= block; o0 += 8)
                for (int r = 0; r < _rows; r++)
                    Avx2.GatherVector256(ot + (long)o0 * ld + r, lanes, 4).Store(yp + (long)r * outF + start + o0);
            for (; o0 < block; o0++)
                for (int r = 0; r < _rows; r++) yp[(long)r * outF + start + o0] = ot[(long)o0 * ld + r];
        }
    }

    /// <summary>out[j][0..63] (+)= Σ_k w[j][k] · xT[k][0..63] for 4 weight rows j (stride ldw), 64 tokens (input stride ldx, output stride ldo).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Outer4x64(float* w, int ldw, float* xT, int ldx, int n, float* o, int ldo, bool set)
    {
        float* w0 = w, w1 = w + ldw, w2 = w + 2 * ldw, w3 = w + 3 * ldw;
        Vector512<float> a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33;
        if (set)
        {
            a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = default;
            a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = default;
        }
        else
        {
            a00 = Vector512.Load(o); a01 = Vector512.Load(o + 16); a02 = Vector512.Load(o + 32); a03 = Vector512.Load(o + 48);
            float* q = o + ldo;
            a10 = Vector512.Load(q); a11 = Vector512.Load(q + 16); a12 = Vector512.Load(q + 32); a13 = Vector512.Load(q + 48);
            q += ldo;
            a20 = Vector512.Load(q); a21 = Vector512.Load(q + 16); a22 = Vector512.Load(q + 32); a23 = Vector512.Load(q + 48);
            q += ldo;
            a30 = Vector512.Load(q); a31 = Vector512.Load(q + 16); a32 = Vector512.Load(q + 32); a33 = Vector512.Load(q + 48);
        }
        float* x = xT;
        for (int k = 0; k < n; k++, x += ldx)
        {
            var x0 = Vector512.Load(x); var x1 = Vector512.Load(x + 16);
            var x2 = Vector512.Load(x + 32); var x3 = Vector512.Load(x + 48);
            var b = Vector512.Create(w0[k]);
            a00 = Vector512.FusedMultiplyAdd(b, x0, a00); a01 = Vector512.FusedMultiplyAdd(b, x1, a01);
            a02 = Vector512.FusedMultiplyAdd(b, x2, a02); a03 = Vector512.FusedMultiplyAdd(b, x3, a03);
            b = Vector512.Create(w1[k]);
            a10 = Vector512.FusedMultiplyAdd(b, x0, a10); a11 = Vector512.FusedMultiplyAdd(b, x1, a11);
            a12 = Vector512.FusedMultiplyAdd(b, x2, a12); a13 = Vector512.FusedMultiplyAdd(b, x3, a13);
            b = Vector512.Create(w2[k]);
            a20 = Vector512.FusedMultiplyAdd(b, x0, a20); a21 = Vector512.FusedMultiplyAdd(b, x1, a21);
            a22 = Vector512.FusedMultiplyAdd(b, x2, a22); a23 = Vector512.FusedMultiplyAdd(b, x3, a23);
            b = Vector512.Create(w3[k]);
            a30 = Vector512.FusedMultiplyAdd(b, x0, a30); a31 = Vector512.FusedMultiplyAdd(b, x1, a31);
            a32 = Vector512.FusedMultiplyAdd(b, x2, a32); a33 = Vector512.FusedMultiplyAdd(b, x3, a33);
        }
        a00.Store(o); a01.Store(o + 16); a02.Store(o + 32); a03.Store(o + 48);
        o += ldo;
        a10.Store(o); a11.Store(o + 16); a12.Store(o + 32); a13.Store(o + 48);
        o += ldo;
        a20.Store(o); a21.Store(o + 16); a22.Store(o + 32); a23.Store(o + 48);
        o += ldo;
        a30.Store(o); a31.Store(o + 16); a32.Store(o + 32); a33.Store(o + 48);
    }

    /// <summary><see cref="Outer4x64"/> for 16 tokens of a last, narrower block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Outer4x16(float* w, int ldw, float* xT, int ldx, int n, float* o, int ldo, bool set)
    {
        float* w0 = w, w1 = w + ldw, w2 = w + 2 * ldw, w3 = w + 3 * ldw;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        if (!set)
        {
            a0 = Vector512.Load(o); a1 = Vector512.Load(o + ldo); a2 = Vector512.Load(o + 2 * ldo); a3 = Vector512.Load(o + 3 * ldo);
        }
        float* x = xT;
        for (int k = 0; k < n; k++, x += ldx)
        {
            var v = Vector512.Load(x);
            a0 = Vector512.FusedMultiplyAdd(Vector512.Create(w0[k]), v, a0);
            a1 = Vector512.FusedMultiplyAdd(Vector512.Create(w1[k]), v, a1);
            a2 = Vector512.FusedMultiplyAdd(Vector512.Create(w2[k]), v, a2);
            a3 = Vector512.FusedMultiplyAdd(Vector512.Create(w3[k]), v, a3);
        }
        a0.Store(o); a1.Store(o + ldo); a2.Store(o + 2 * ldo); a3.Store(o + 3 * ldo);
    }

    private void ComputeTiles(ref Target t, int start, int end, int worker)
    {
        var w = t.W;
        int inF = w.Cols, outF = w.Rows;
        var scratch = _scratch[worker];
        if (scratch.Length < Tile * inF) _scratch[worker] = scratch = new float[Tile * inF];
        fixed (float* s = scratch, xp = _x, yp = t.Y)
        {
            for (int o = start; o < end; o += Tile)
            {
                int tile = Math.Min(Tile, end - o);
                for (int j = 0; j < Tile; j++)
                {
                    var dst = scratch.AsSpan(j * inF, inF);
                    if (j < tile) w.RowToFloat(o + j, dst); else dst.Clear();
                }
                for (int kc = 0; kc < inF; kc += KChunk)
                {
                    int klen = Math.Min(KChunk, inF - kc);
                    bool first = kc == 0;
                    int r = 0;
                    if (Wide)
                        for (; r + 4 <= _rows; r += 4)
                            Kernel4x4Wide(s + kc, inF, xp + (long)r * inF + kc, inF, klen, yp + (long)r * outF + o, outF, tile, first);
                    for (; r + 2 <= _rows; r += 2)
                        Kernel4x2(s + kc, inF, xp + (long)r * inF + kc, xp + (long)(r + 1) * inF + kc, klen,
                                  yp + (long)r * outF + o, yp + (long)(r + 1) * outF + o, tile, first);
                    if (r < _rows)
                        Kernel4x1(s + kc, inF, xp + (long)r * inF + kc, klen, yp + (long)r * outF + o, tile, first);
                }
            }
        }
    }

    /// <summary>512-bit FMA where the JIT runs it natively: twice the 256-bit peak on cores with two 512-bit FMA ports.</summary>
    private static readonly bool Wide = Vector512.IsHardwareAccelerated;

    /// <summary>
    /// Dot products of 4 weight rows (stride ld) with 4 input rows (stride ldx) over n columns, 512 bits wide: 16
    /// accumulators, and each loaded vector feeds four FMAs (eight loads per sixteen FMAs), so the loop runs at the FMA
    /// ports' rate from L1. Results set or added into y (row stride ldy).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel4x4Wide(float* w, int ld, float* x, int ldx, int n, float* y, int ldy, int tile, bool set)
    {
        float* w0 = w, w1 = w + ld, w2 = w + 2 * ld, w3 = w + 3 * ld;
        float* x0 = x, x1 = x + ldx, x2 = x + 2 * ldx, x3 = x + 3 * ldx;
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default;
        Vector512<float> a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default;
        Vector512<float> a30 = default, a31 = default, a32 = default, a33 = default;
        int i = 0;
        for (; i <= n - 16; i += 16)
        {
            var v0 = Vector512.Load(x0 + i); var v1 = Vector512.Load(x1 + i);
            var v2 = Vector512.Load(x2 + i); var v3 = Vector512.Load(x3 + i);
            var b = Vector512.Load(w0 + i);
            a00 = Vector512.FusedMultiplyAdd(b, v0, a00); a10 = Vector512.FusedMultiplyAdd(b, v1, a10);
            a20 = Vector512.FusedMultiplyAdd(b, v2, a20); a30 = Vector512.FusedMultiplyAdd(b, v3, a30);
            b = Vector512.Load(w1 + i);
            a01 = Vector512.FusedMultiplyAdd(b, v0, a01); a11 = Vector512.FusedMultiplyAdd(b, v1, a11);
            a21 = Vector512.FusedMultiplyAdd(b, v2, a21); a31 = Vector512.FusedMultiplyAdd(b, v3, a31);
            b = Vector512.Load(w2 + i);
            a02 = Vector512.FusedMultiplyAdd(b, v0, a02); a12 = Vector512.FusedMultiplyAdd(b, v1, a12);
            a22 = Vector512.FusedMultiplyAdd(b, v2, a22); a32 = Vector512.FusedMultiplyAdd(b, v3, a32);
            b = Vector512.Load(w3 + i);
            a03 = Vector512.FusedMultiplyAdd(b, v0, a03); a13 = Vector512.FusedMultiplyAdd(b, v1, a13);
            a23 = Vector512.FusedMultiplyAdd(b, v2, a23); a33 = Vector512.FusedMultiplyAdd(b, v3, a33);
        }
        float s00 = Vector512.Sum(a00), s01 = Vector512.Sum(a01), s02 = Vector512.Sum(a02), s03 = Vector512.Sum(a03);
        float s10 = Vector512.Sum(a10), s11 = Vector512.Sum(a11), s12 = Vector512.Sum(a12), s13 = Vector512.Sum(a13);
        float s20 = Vector512.Sum(a20), s21 = Vector512.Sum(a21), s22 = Vector512.Sum(a22), s23 = Vector512.Sum(a23);
        float s30 = Vector512.Sum(a30), s31 = Vector512.Sum(a31), s32 = Vector512.Sum(a32), s33 = Vector512.Sum(a33);
        for (; i < n; i++)
        {
            float p0 = x0[i], p1 = x1[i], p2 = x2[i], p3 = x3[i];
            s00 += w0[i] * p0; s01 += w1[i] * p0; s02 += w2[i] * p0; s03 += w3[i] * p0;
            s10 += w0[i] * p1; s11 += w1[i] * p1; s12 += w2[i] * p1; s13 += w3[i] * p1;
            s20 += w0[i] * p2; s21 += w1[i] * p2; s22 += w2[i] * p2; s23 += w3[i] * p2;
            s30 += w0[i] * p3; s31 += w1[i] * p3; s32 += w2[i] * p3; s33 += w3[i] * p3;
        }
        Store(y, tile, set, s00, s01, s02, s03);
        Store(y + ldy, tile, set, s10, s11, s12, s13);
        Store(y + 2 * ldy, tile, set, s20, s21, s22, s23);
        Store(y + 3 * ldy, tile, set, s30, s31, s32, s33);
    }

    /// <summary>Dot products of 4 weight rows (stride ld) with 2 input rows over n columns; results set or added into y0/y1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel4x2(float* w, int ld, float* x0, float* x1, int n, float* y0, float* y1, int tile, bool set)
    {
        float* w0 = w, w1 = w + ld, w2 = w + 2 * ld, w3 = w + 3 * ld;
        Vector256<float> a00 = default, a01 = default, a02 = default, a03 = default;
        Vector256<float> a10 = default, a11 = default, a12 = default, a13 = default;
        int i = 0;
        for (; i <= n - 8; i += 8)
        {
            var v0 = Vector256.Load(x0 + i);
            var v1 = Vector256.Load(x1 + i);
            var b = Vector256.Load(w0 + i);
            a00 = Vector256.FusedMultiplyAdd(b, v0, a00); a10 = Vector256.FusedMultiplyAdd(b, v1, a10);
            b = Vector256.Load(w1 + i);
            a01 = Vector256.FusedMultiplyAdd(b, v0, a01); a11 = Vector256.FusedMultiplyAdd(b, v1, a11);
            b = Vector256.Load(w2 + i);
            a02 = Vector256.FusedMultiplyAdd(b, v0, a02); a12 = Vector256.FusedMultiplyAdd(b, v1, a12);
            b = Vector256.Load(w3 + i);
            a03 = Vector256.FusedMultiplyAdd(b, v0, a03); a13 = Vector256.FusedMultiplyAdd(b, v1, a13);
        }
        float s00 = Vector256.Sum(a00), s01 = Vector256.Sum(a01), s02 = Vector256.Sum(a02), s03 = Vector256.Sum(a03);
        float s10 = Vector256.Sum(a10), s11 = Vector256.Sum(a11), s12 = Vector256.Sum(a12), s13 = Vector256.Sum(a13);
        for (; i < n; i++)
        {
            float p = x0[i], q = x1[i];
            s00 += w0[i] * p; s01 += w1[i] * p; s02 += w2[i] * p; s03 += w3[i] * p;
            s10 += w0[i] * q; s11 += w1[i] * q; s12 += w2[i] * q; s13 += w3[i] * q;
        }
        Store(y0, tile, set, s00, s01, s02, s03);
        Store(y1, tile, set, s10, s11, s12, s13);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel4x1(float* w, int ld, float* x0, int n, float* y0, int tile, bool set)
    {
        float* w0 = w, w1 = w + ld, w2 = w + 2 * ld, w3 = w + 3 * ld;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        int i = 0;
        for (; i <= n - 8; i += 8)
        {
            var v = Vector256.Load(x0 + i);
            a0 = Vector256.FusedMultiplyAdd(Vector256.Load(w0 + i), v, a0);
            a1 = Vector256.FusedMultiplyAdd(Vector256.Load(w1 + i), v, a1);
            a2 = Vector256.FusedMultiplyAdd(Vector256.Load(w2 + i), v, a2);
            a3 = Vector256.FusedMultiplyAdd(Vector256.Load(w3 + i), v, a3);
        }
        float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
        for (; i < n; i++)
        {
            float p = x0[i];
            s0 += w0[i] * p; s1 += w1[i] * p; s2 += w2[i] * p; s3 += w3[i] * p;
        }
        Store(y0, tile, set, s0, s1, s2, s3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(float* y, int tile, bool set, float s0, float s1, float s2, float s3)
    {
        if (set)
        {
            y[0] = s0; if (tile > 1) y[1] = s1; if (tile > 2) y[2] = s2; if (tile > 3) y[3] = s3;
        }
        else
        {
            y[0] += s0; if (tile > 1) y[1] += s1; if (tile > 2) y[2] += s2; if (tile > 3) y[3] += s3;
        }
    }
}

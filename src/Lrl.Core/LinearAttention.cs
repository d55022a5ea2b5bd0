namespace Lrl;

/// <summary>
/// Ops for recurrent / linear-attention architectures (RWKV v5.2 and v7, TransNormerLLM lightning attention), kept
/// beside <see cref="IBackend"/> so backends opt in. A model casts its backend:
/// <c>backend as ILinearAttentionOps ?? throw new LrlException(...)</c>.
/// Activations are f32 row-major [rows, width]; states are f32 buffers the model owns and the op updates in place.
/// Recurrent ops process rows in order (row r is the token after row r-1). Ops never allocate per call.
/// </summary>
public interface ILinearAttentionOps
{
    /// <summary>In place, x[i] = 1 / (1 + e^-x[i]).</summary>
    void Sigmoid(DeviceBuffer x, long n);

    /// <summary>In place, x[i] = x[i]·sigmoid(x[i]).</summary>
    void Silu(DeviceBuffer x, long n);

    /// <summary>In place, x[i] = tanh(x[i]).</summary>
    void Tanh(DeviceBuffer x, long n);

    /// <summary>In place, x[i] = max(x[i], 0)².</summary>
    void ReluSquare(DeviceBuffer x, long n);

    /// <summary>a[i] *= b[i] for i &lt; n.</summary>
    void Multiply(DeviceBuffer a, DeviceBuffer b, long n);

    /// <summary>In place, x[i] *= s.</summary>
    void Scale(DeviceBuffer x, float s, long n);

    /// <summary>y[r, i] = x[r, i]·v[i] for rows of width v.Cols (y may alias x).</summary>
    void MultiplyRow(DeviceBuffer x, Weight v, DeviceBuffer y, int rows);

    /// <summary>
    /// Token shift: prev[0, :] = state, prev[r, :] = x[r-1, :] for 0 &lt; r &lt; rows; then state = x[rows-1, :].
    /// x and prev are [rows, width], state is [width].
    /// </summary>
    void TokenShift(DeviceBuffer x, DeviceBuffer state, DeviceBuffer prev, int rows, int width);

    /// <summary>y[r, i] = a[r, i] + (b[r, i] − a[r, i])·mix[i], rows of width mix.Cols (y may alias a or b).</summary>
    void LerpRow(DeviceBuffer a, DeviceBuffer b, Weight mix, DeviceBuffer y, int rows);

    /// <summary>y[i] = a[i] + (b[i] − a[i])·t[i] for i &lt; n (y may alias a, b or t).</summary>
    void Lerp(DeviceBuffer a, DeviceBuffer b, DeviceBuffer t, DeviceBuffer y, long n);

    /// <summary>
    /// Group norm of each row of width w.Cols split into <paramref name="groups"/> equal groups:
    /// y = (x − mean_g) / sqrt(var_g + eps)·w + b (biased variance, like torch.nn.functional.group_norm).
    /// </summary>
    void GroupNorm(DeviceBuffer x, Weight w, Weight b, DeviceBuffer y, int rows, int groups, float eps);

    /// <summary>In place, each group of <paramref name="groupSize"/> values: x / max(‖x‖₂, eps) (torch F.normalize).</summary>
    void L2NormalizeGroups(DeviceBuffer x, int rows, int width, int groupSize, float eps);

    /// <summary>
    /// RWKV v5.2 WKV over rows in order, per head h with state S_h [headSize (k index i), headSize (v index j)]:
    /// out[j] = Σ_i r[i]·(u[i]·k[i]·v[j] + S[i, j]); then S[i, j] = S[i, j]·w[i] + k[i]·v[j].
    /// r, k, v, output are [rows, heads·headSize]; decay w (= exp(−exp(time_decay))) and bonus u (time_faaaa) are
    /// vectors of heads·headSize; state is [heads, headSize, headSize].
    /// </summary>
    void Wkv5(DeviceBuffer r, DeviceBuffer k, DeviceBuffer v, Weight decay, Weight bonus, DeviceBuffer state,
              DeviceBuffer output, int rows, int heads, int headSize);

    /// <summary>
    /// RWKV v7 WKV over rows in order, per head with state S [headSize (v index i), headSize (k index j)] and
    /// α = −kk, β = kk·a: S = S·diag(w) + (S·α)βᵀ + v·kᵀ; out[i] = Σ_j S[i, j]·r[j].
    /// All activations are [rows, heads·headSize]; w is the per-token decay (already in (0, 1)).
    /// </summary>
    void Wkv7(DeviceBuffer r, DeviceBuffer w, DeviceBuffer k, DeviceBuffer v, DeviceBuffer kk, DeviceBuffer a,
              DeviceBuffer state, DeviceBuffer output, int rows, int heads, int headSize);

    /// <summary>In place, w = exp(−e^(−0.5)·sigmoid(w)) (the RWKV v7 decay from its pre-activation).</summary>
    void Rwkv7Decay(DeviceBuffer w, long n);

    /// <summary>In place, k = k·(1 + (a − 1)·kA[i]) for rows of width kA.Cols.</summary>
    void Rwkv7KeyScale(DeviceBuffer k, DeviceBuffer a, Weight kA, int rows);

    /// <summary>
    /// RWKV v7 bonus: output[h, i] += (Σ_j r[h, j]·k[h, j]·rK[h, j])·v[h, i] per row and head (rK is heads·headSize).
    /// </summary>
    void Rwkv7Bonus(DeviceBuffer r, DeviceBuffer k, DeviceBuffer v, Weight rK, DeviceBuffer output, int rows, int heads, int headSize);

    /// <summary>
    /// Lightning attention (linear attention with per-head decay λ_h = exp(−slope_h)), recurrent form, row by row:
    /// KV_h = λ_h·KV_h + k_tᵀv_t; o_t = q_t·KV_h. Equivalent to o_t = Σ_{s≤t} λ^{t−s}(q_t·k_s)v_s over the whole sequence.
    /// q, k are [rows, heads·keyDim]; v, output [rows, heads·valueDim]; state [heads, keyDim, valueDim];
    /// slopes is a vector of heads.
    /// </summary>
    void LightningRecurrent(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, Weight slopes, DeviceBuffer state,
                            DeviceBuffer output, int rows, int heads, int keyDim, int valueDim);

    /// <summary>
    /// Lightning attention, chunked (block) form for prefill, same result and state update as
    /// <see cref="LightningRecurrent"/>: within a block of ≤ blockSize rows a masked, decayed q·kᵀ product; across
    /// blocks the carried state KV, decayed by λ^(j+1) for the block's j-th row, then KV = λ^m·KV + Σ_s λ^(m−1−s)k_sᵀv_s.
    /// </summary>
    void LightningChunked(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, Weight slopes, DeviceBuffer state,
                          DeviceBuffer output, int rows, int heads, int keyDim, int valueDim, int blockSize);

    /// <summary>
    /// TransNormerLLM's linearised relative positional encoding (LRPE): for row r at position p = pos0 + r and head h,
    /// y[r, h, :] = [x[r, h, :]·cos(θ_h·p), x[r, h, :]·sin(θ_h·p)] (elementwise, θ_h of headDim values), so y is
    /// [rows, heads·2·headDim] and y_t·y_s = Σ_i x_t,i·x_s,i·cos(θ_i(t − s)). theta is a vector of heads·headDim.
    /// </summary>
    void Lrpe(DeviceBuffer x, Weight theta, DeviceBuffer y, int rows, int heads, int headDim, int pos0);

    /// <summary>Sets the first n elements of x to zero (state reset).</summary>
    void Zero(DeviceBuffer x, long n);
}

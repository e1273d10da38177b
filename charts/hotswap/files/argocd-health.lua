-- Argo CD health check for hotswap.dev/ModelDeployment (resource.customizations.health.
-- hotswap.dev_ModelDeployment in argocd-cm; docs/observability.md). Reads what the
-- operator writes: observedGeneration, phase, error, message, canary, conditions.
local hs = {status = "Progressing", message = "Waiting for the operator to report status"}
local function table_or_nil(value)
  if type(value) == "table" then
    return value
  end
  return nil
end
local function text(value)
  if type(value) == "string" then
    return value
  end
  return ""
end
local st = table_or_nil(obj.status)
if st == nil then
  return hs
end
local generation = (table_or_nil(obj.metadata) or {}).generation
local observed = st.observedGeneration
if type(generation) == "number" and (type(observed) ~= "number" or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local function condition(kind)
  for _, c in ipairs(table_or_nil(st.conditions) or {}) do
    if type(c) == "table" and c.type == kind then
      return c
    end
  end
  return nil
end
local function say(value, fallback)
  if text(value) ~= "" then
    return value
  end
  return fallback
end
local phase = text(st.phase)
if phase == "Failed" then
  return {status = "Degraded", message = say(st.error, say(st.message, "Failed"))}
end
if phase == "Degraded" or phase == "RolledBack" then
  local degraded = condition("Degraded")
  return {status = "Degraded", message = say(st.message, say(degraded and degraded.message, phase))}
end
local progressing = condition("Progressing")
if progressing ~= nil and progressing.status == "False" and progressing.reason == "ProgressDeadlineExceeded" then
  return {status = "Degraded", message = say(progressing.message, "Progress deadline exceeded")}
end
local canary = table_or_nil(st.canary)
if canary ~= nil then
  local where = "Canary of revision " .. tostring(canary.revision) .. " at step " .. tostring(canary.step or 1)
  if text(canary.halted) ~= "" then
    return {status = "Degraded", message = where .. " halted: " .. canary.halted}
  end
  if canary.paused == true then
    return {status = "Suspended", message = where .. " paused"}
  end
  return {status = "Progressing", message = where}
end
if phase == "Ready" then
  return {status = "Healthy", message = "Revision " .. tostring(st.revision) .. " serving on " .. say(st.ready, "all") .. " pods"}
end
hs.message = say(st.message, say(progressing and progressing.message, phase ~= "" and phase or hs.message))
return hs

-- Argo CD health of a ModelDeployment (modeldeploy.dev/v1alpha1), from what the operator writes in status.
-- Order matters: a status about an older generation says nothing about the current spec; a failure outranks
-- a rollout still in progress; Ready counts only when the Ready condition agrees with the phase.
local hs = {}
local function cond(status, kind)
  if status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then return c end
  end
  return nil
end
local function msg(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then return c.message end
  return fallback
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the modeldeploy operator to report a status (is it running?)"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "the operator has not yet acted on generation " .. tostring(generation) ..
    " (status describes " .. tostring(status.observedGeneration) .. ")"
  return hs
end

-- Stalled=True is the operator's terminal failure (kstatus reads it as Failed): a child it may not touch, a write
-- the API server refused, a training that failed, serving pods that keep failing. Its reason says which.
local stalled = cond(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = tostring(stalled.reason) .. ": " .. msg(stalled, "see kubectl describe md " .. obj.metadata.name)
  return hs
end

local phase = status.phase
local degraded = cond(status, "Degraded")
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = "training failed: " .. msg(cond(status, "Trained"), "see kubectl describe md " .. obj.metadata.name)
  return hs
end
if phase == "Degraded" or (degraded ~= nil and degraded.status == "True") then
  hs.status = "Degraded"
  hs.message = msg(degraded, "serving pods are failing")
  return hs
end

local ready = cond(status, "Ready")
if phase == "Ready" and ready ~= nil and ready.status == "True" then
  if status.desiredReplicas == 0 then
    hs.status = "Suspended"
    hs.message = "scaled to zero replicas; version " .. tostring(status.modelVersion) .. " is trained and kept"
    return hs
  end
  hs.status = "Healthy"
  hs.message = msg(ready, "ready")
  return hs
end

hs.status = "Progressing"
local progressing = cond(status, "Progressing")
hs.message = phase .. ": " .. msg(progressing, msg(ready, "in progress"))
return hs

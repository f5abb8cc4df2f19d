"""agentmesh.agents.v1.AgentService over gRPC: proto in, domain call, proto out. No rules here."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc.aio import ServicerContext

from agentmesh.agents.v1 import agents_service_pb2 as pb
from agentmesh.agents.v1 import agents_service_pb2_grpc as pb_grpc
from services.agents import convert
from services.agents.service import AgentService
from services.platform.auth import principal


class AgentServicer(pb_grpc.AgentServiceServicer):
    def __init__(self, *, service: AgentService) -> None:
        self._service = service

    async def CreateAgent(
        self,
        request: pb.CreateAgentRequest,
        context: ServicerContext[pb.CreateAgentRequest, pb.CreateAgentResponse],
    ) -> pb.CreateAgentResponse:
        agent = request.agent
        created = await self._service.create_agent(
            principal(),
            display_name=agent.display_name,
            description=agent.description,
            state=convert.state_name(agent.state),
            config=convert.config_to_dict(agent.config),
            template_id=request.template_id,
            request_id=request.request_id,
        )
        return pb.CreateAgentResponse(agent=convert.agent_to_proto(created))

    async def GetAgent(
        self,
        request: pb.GetAgentRequest,
        context: ServicerContext[pb.GetAgentRequest, pb.GetAgentResponse],
    ) -> pb.GetAgentResponse:
        agent = await self._service.get_agent(principal(), request.agent_id)
        return pb.GetAgentResponse(agent=convert.agent_to_proto(agent))

    async def ListAgents(
        self,
        request: pb.ListAgentsRequest,
        context: ServicerContext[pb.ListAgentsRequest, pb.ListAgentsResponse],
    ) -> pb.ListAgentsResponse:
        page = await self._service.list_agents(
            principal(),
            page_size_=request.page_size,
            page_token=request.page_token,
            state=convert.state_name(request.state),
        )
        return pb.ListAgentsResponse(
            agents=[convert.agent_to_proto(a) for a in page.items], next_page_token=page.next_page_token
        )

    async def UpdateAgent(
        self,
        request: pb.UpdateAgentRequest,
        context: ServicerContext[pb.UpdateAgentRequest, pb.UpdateAgentResponse],
    ) -> pb.UpdateAgentResponse:
        updated = await self._service.update_agent(
            principal(),
            request.agent.id,
            etag=request.agent.etag,
            paths=list(request.update_mask.paths),
            patch=convert.content_of(request.agent),
        )
        return pb.UpdateAgentResponse(agent=convert.agent_to_proto(updated))

    async def DeleteAgent(
        self,
        request: pb.DeleteAgentRequest,
        context: ServicerContext[pb.DeleteAgentRequest, pb.DeleteAgentResponse],
    ) -> pb.DeleteAgentResponse:
        await self._service.delete_agent(principal(), request.agent_id, etag=request.etag)
        return pb.DeleteAgentResponse()

    async def ActivateAgent(
        self,
        request: pb.ActivateAgentRequest,
        context: ServicerContext[pb.ActivateAgentRequest, pb.ActivateAgentResponse],
    ) -> pb.ActivateAgentResponse:
        agent = await self._service.set_state(principal(), request.agent_id, etag=request.etag, active=True)
        return pb.ActivateAgentResponse(agent=convert.agent_to_proto(agent))

    async def DeactivateAgent(
        self,
        request: pb.DeactivateAgentRequest,
        context: ServicerContext[pb.DeactivateAgentRequest, pb.DeactivateAgentResponse],
    ) -> pb.DeactivateAgentResponse:
        agent = await self._service.set_state(principal(), request.agent_id, etag=request.etag, active=False)
        return pb.DeactivateAgentResponse(agent=convert.agent_to_proto(agent))

    async def ListAgentVersions(
        self,
        request: pb.ListAgentVersionsRequest,
        context: ServicerContext[pb.ListAgentVersionsRequest, pb.ListAgentVersionsResponse],
    ) -> pb.ListAgentVersionsResponse:
        page = await self._service.list_versions(
            principal(), request.agent_id, page_size_=request.page_size, page_token=request.page_token
        )
        return pb.ListAgentVersionsResponse(
            versions=[convert.version_to_proto(v) for v in page.items], next_page_token=page.next_page_token
        )

    async def GetAgentVersion(
        self,
        request: pb.GetAgentVersionRequest,
        context: ServicerContext[pb.GetAgentVersionRequest, pb.GetAgentVersionResponse],
    ) -> pb.GetAgentVersionResponse:
        version = await self._service.get_version(principal(), request.agent_id, request.version)
        return pb.GetAgentVersionResponse(version=convert.version_to_proto(version))

    async def RollbackAgent(
        self,
        request: pb.RollbackAgentRequest,
        context: ServicerContext[pb.RollbackAgentRequest, pb.RollbackAgentResponse],
    ) -> pb.RollbackAgentResponse:
        agent = await self._service.rollback(
            principal(), request.agent_id, version=request.version, etag=request.etag
        )
        return pb.RollbackAgentResponse(agent=convert.agent_to_proto(agent))

    async def DiffAgentVersions(
        self,
        request: pb.DiffAgentVersionsRequest,
        context: ServicerContext[pb.DiffAgentVersionsRequest, pb.DiffAgentVersionsResponse],
    ) -> pb.DiffAgentVersionsResponse:
        diffs = await self._service.diff_versions(
            principal(), request.agent_id, request.from_version, request.to_version
        )
        return pb.DiffAgentVersionsResponse(diffs=[convert.diff_to_proto(d) for d in diffs])

    async def ValidateAgentConfig(
        self,
        request: pb.ValidateAgentConfigRequest,
        context: ServicerContext[pb.ValidateAgentConfigRequest, pb.ValidateAgentConfigResponse],
    ) -> pb.ValidateAgentConfigResponse:
        violations = await self._service.validate(
            principal(), request.display_name, convert.config_to_dict(request.config)
        )
        return pb.ValidateAgentConfigResponse(
            valid=not violations,
            violations=[convert.violation_to_proto(v) for v in violations],
        )

    async def ListTemplates(
        self,
        request: pb.ListTemplatesRequest,
        context: ServicerContext[pb.ListTemplatesRequest, pb.ListTemplatesResponse],
    ) -> pb.ListTemplatesResponse:
        page = await self._service.list_templates(
            principal(), page_size_=request.page_size, page_token=request.page_token
        )
        return pb.ListTemplatesResponse(
            templates=[convert.template_to_proto(t) for t in page.items], next_page_token=page.next_page_token
        )

    async def GetTemplate(
        self,
        request: pb.GetTemplateRequest,
        context: ServicerContext[pb.GetTemplateRequest, pb.GetTemplateResponse],
    ) -> pb.GetTemplateResponse:
        template = await self._service.get_template(principal(), request.template_id)
        return pb.GetTemplateResponse(template=convert.template_to_proto(template))

    async def CreateTemplate(
        self,
        request: pb.CreateTemplateRequest,
        context: ServicerContext[pb.CreateTemplateRequest, pb.CreateTemplateResponse],
    ) -> pb.CreateTemplateResponse:
        t = request.template
        template = await self._service.create_template(
            principal(),
            display_name=t.display_name,
            description=t.description,
            config=convert.config_to_dict(t.config),
            request_id=request.request_id,
        )
        return pb.CreateTemplateResponse(template=convert.template_to_proto(template))

    async def DeleteTemplate(
        self,
        request: pb.DeleteTemplateRequest,
        context: ServicerContext[pb.DeleteTemplateRequest, pb.DeleteTemplateResponse],
    ) -> pb.DeleteTemplateResponse:
        await self._service.delete_template(principal(), request.template_id)
        return pb.DeleteTemplateResponse()

    async def WatchAgents(
        self,
        request: pb.WatchAgentsRequest,
        context: ServicerContext[pb.WatchAgentsRequest, pb.WatchAgentsResponse],
    ) -> AsyncIterator[pb.WatchAgentsResponse]:
        async def subscribed() -> None:
            # Headers go out once the subscription holds, so a watcher knows it misses nothing after.
            await context.send_initial_metadata(())

        async for event in self._service.watch(
            principal(), all_tenants=request.all_tenants, on_ready=subscribed
        ):
            yield pb.WatchAgentsResponse(event=convert.event_to_proto(event))
